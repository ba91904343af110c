"""The Dagster internals `affise_s3_assets/dagster_internal.py` stands on, and what they buy:
a run rebuilds the definitions its code server pinned, not the file's newer state.

Goes through Dagster's own load paths (a code server's initial load, a run worker's
reconstruction with the load data stored with the run's execution plan); no mock."""

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.definitions.definitions_load_context import (
    DefinitionsLoadContext,
    DefinitionsLoadType,
)
from dagster._core.definitions.reconstruct import (
    ReconstructableRepository,
    initialize_repository_def_from_pointer,
)

from affise_s3_assets import dagster_internal
from affise_s3_assets.automation.live_config import APPLIED_CONFIG_KEY
from tests.conftest import ROOT

BLOCK = """  - name: {name}
    start: "2026-11-25 00:00:00"
    clicks:
      frequency: 5
      bucket: {name}-bucket
      region: us-east-1
      directory: {name}/clicks
      access_key: ${{{upper}_AWS_ACCESS_KEY_ID}}
      secret_key: ${{{upper}_AWS_SECRET_ACCESS_KEY}}
      affiliates: {affiliates}
"""


def block(name: str, affiliates: list[int]) -> str:
    return BLOCK.format(name=name, upper=name.upper(), affiliates=affiliates)


def affiliates_of(repo: dg.RepositoryDefinition, name: str) -> str:
    graph = repo.asset_graph
    (metadata,) = [
        graph.get(key).metadata for key in graph.get_all_asset_keys() if key.path[1:2] == [name]
    ]
    return metadata["filter_affiliates"]


def integrations_of(repo: dg.RepositoryDefinition) -> set[str]:
    return {key.path[1] for key in repo.asset_graph.get_all_asset_keys() if key.path[0] == "affise"}


def test_the_internals_this_project_stands_on_are_where_it_expects_them() -> None:
    """An upgrade of the pinned Dagster that moves or changes one of them fails here first."""
    context = DefinitionsLoadContext(load_type=DefinitionsLoadType.INITIALIZATION)
    with DefinitionsLoadContext.scoped(context):
        dagster_internal.pin_for_runs("k", "v")
        assert context.get_pending_reconstruction_metadata() == {"k": "v"}
        assert dagster_internal.reconstruction_value("k") is None
        assert dagster_internal.loading_location_name() is None


def test_a_run_rebuilds_the_config_its_code_server_loaded_not_the_file_as_it_is_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    integrations = tmp_path / "integrations.yaml"
    integrations.write_text("integrations:\n" + block("acme", [101, 102]))
    monkeypatch.setenv("AFFISE_INTEGRATIONS", str(integrations))
    monkeypatch.delenv("AFFISE_STATE_DIR", raising=False)
    pointer = ModuleCodePointer("affise_s3_assets.definitions", "defs", str(ROOT))

    # The code server's load: what it applied travels with every run it launches.
    served = initialize_repository_def_from_pointer(pointer)
    load_data = served.repository_load_data
    assert load_data is not None and APPLIED_CONFIG_KEY in load_data.reconstruction_metadata
    assert integrations_of(served) == {"acme"}

    # The file changes before the run starts: one integration appended, a filter changed.
    integrations.write_text(
        "integrations:\n" + block("acme", [103]) + block("globex", [101]),
    )

    # The run worker rebuilds from the load data stored with its execution plan.
    rebuilt = ReconstructableRepository(pointer).with_repository_load_data(load_data)
    run_repo = rebuilt.get_definition()
    assert integrations_of(run_repo) == {"acme"}
    assert affiliates_of(run_repo, "acme") == affiliates_of(served, "acme")
    assert affiliates_of(run_repo, "acme") == "101, 102"

    # A code server that loads again (a reload) serves, and pins, the new file.
    reloaded = initialize_repository_def_from_pointer(pointer)
    assert integrations_of(reloaded) == {"acme", "globex"}
    assert affiliates_of(reloaded, "acme") == "103"


def test_the_key_value_compare_and_set_stands_on_the_run_storages_table(tmp_path: Path) -> None:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        storage = dagster_internal.sql_run_storage(instance.run_storage)
        assert storage is not None
        assert dagster_internal.compare_and_set_key_value(storage, "k", None, "1")
        assert not dagster_internal.compare_and_set_key_value(storage, "k", None, "2")
        assert not dagster_internal.compare_and_set_key_value(storage, "k", "0", "2")
        assert dagster_internal.compare_and_set_key_value(storage, "k", "1", "2")
        assert instance.run_storage.get_cursor_values({"k"}) == {"k": "2"}
