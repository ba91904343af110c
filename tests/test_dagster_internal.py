"""The Dagster internals `affise_s3_assets/dagster_internal.py` stands on, and what they buy:
a run rebuilds the definitions its code server pinned, not the file's newer state.

Goes through Dagster's own load paths (a code server's initial load, a run worker's
reconstruction with the load data stored with the run's execution plan); no mock."""

import ast
import inspect
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
        storage = dagster_internal.sql_run_storage(instance)
        assert storage is not None
        assert dagster_internal.compare_and_set_key_value(storage, "k", None, "1")
        assert not dagster_internal.compare_and_set_key_value(storage, "k", None, "2")
        assert not dagster_internal.compare_and_set_key_value(storage, "k", "0", "2")
        assert dagster_internal.compare_and_set_key_value(storage, "k", "1", "2")
        assert instance.run_storage.get_cursor_values({"k"}) == {"k": "2"}


PACKAGE = ROOT / "affise_s3_assets"


# Instance members Dagster 1.13 does not mark public, called by this package.
PRIVATE_INSTANCE_MEMBERS = {
    "run_storage",
    "get_cursor_values",
    "set_cursor_values",
    "all_instigator_state",
    "get_instigator_state",
    "update_instigator_state",
    "daemon_cursor_storage",
    "add_run_tags",
    "get_materialized_partitions",
    "get_runs",
}


def private_uses(source: str) -> list[tuple[int, str]]:
    """Where `source` reaches into Dagster's private parts: a `dagster._...` import (at the
    top or in a function), `from dagster import _x`, `dg._x` / `dagster._x`, a module named
    in a string (`importlib.import_module("dagster._...")`), an instance member above."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("dagster._"):
                found.append((node.lineno, node.module))
            elif node.module == "dagster":
                found += [(node.lineno, a.name) for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("dagster._")]
        elif isinstance(node, ast.Attribute):
            base = node.value.id if isinstance(node.value, ast.Name) else None
            if base in ("dg", "dagster") and node.attr.startswith("_"):
                found.append((node.lineno, f"{base}.{node.attr}"))
            elif node.attr in PRIVATE_INSTANCE_MEMBERS:
                found.append((node.lineno, node.attr))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith("dagster._")
        ):
            found.append((node.lineno, node.value))
    return sorted(found)


def test_the_private_use_finder_finds_each_kind() -> None:
    sample = (
        "import dagster as dg\n"
        "from dagster import _check\n"
        "def f(instance):\n"
        "    from dagster._core.storage.tags import X\n"
        "    import dagster._serdes\n"
        "    importlib.import_module('dagster._core')\n"
        "    dg._utils\n"
        "    instance.get_runs()\n"
        "    instance.run_storage.get_cursor_values(set())\n"
        "    instance.get_run_records()\n"
    )
    assert [line for line, _ in private_uses(sample)] == [2, 4, 5, 6, 7, 8, 9, 9]


def test_no_module_but_dagster_internal_uses_dagsters_private_parts() -> None:
    """Every private Dagster import and private instance call of the package goes through
    affise_s3_assets/dagster_internal.py."""
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "dagster_internal.py"
        for line, name in private_uses(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_every_internal_named_on_first_use_resolves() -> None:
    for name in dagster_internal._ON_FIRST_USE:
        assert getattr(dagster_internal, name) is not None, name
    # What instance_storage.py extends is a storage class of that name, with the members it
    # calls or overrides.
    base = dagster_internal.SqliteEventLogStorage
    for member in ("_connect", "wipe", "dispose", "_has_asset_key_index_cols_on_connection"):
        assert callable(getattr(base, member, None)), member
    assert isinstance(dagster_internal.INDEX_SHARD_NAME, str)
    assert dagster_internal.SQLITE_BUSY_TIMEOUT_SECONDS > 0


def test_the_overridden_storage_methods_keep_dagsters_signatures() -> None:
    """A method instance_storage.py overrides that Dagster renames or re-signs fails here."""
    from affise_s3_assets import instance_storage

    checked = 0
    for cls in (
        instance_storage.KeptConnectionsSqliteEventLogStorage,
        instance_storage.KeptConnectionsEventLogStorage,
        instance_storage.KeptConnectionsRunStorage,
    ):
        dagsters = [base for base in cls.__mro__ if base.__module__.startswith("dagster")]
        for klass in cls.__mro__:
            if not klass.__module__.startswith("affise_s3_assets"):
                continue
            for name, member in vars(klass).items():
                if name.startswith("__") or not callable(member):
                    continue
                theirs = next((getattr(b, name) for b in dagsters if name in vars(b)), None)
                if theirs is None:
                    continue  # a helper of ours, not an override
                ours = inspect.signature(member).parameters
                assert list(inspect.signature(theirs).parameters) == list(ours), (cls, name)
                checked += 1
    assert checked >= 5


def test_the_asset_job_type_and_the_range_tags_are_dagsters() -> None:
    job = dg.define_asset_job("j", selection=dg.AssetSelection.all())
    assert isinstance(job, dagster_internal.AssetJob)
    # The tags Dagster's backfills set on a ranged run (read back by its run worker).
    assert dagster_internal.partition_range_tags("a", "b") == {
        "dagster/asset_partition_range_start": "a",
        "dagster/asset_partition_range_end": "b",
    }


def test_the_key_value_store_reads_back_and_the_stopped_schedules_are_asked_as_expected(
    tmp_path: Path,
) -> None:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        dagster_internal.store_values(instance, {"a": "1", "b": "2"})
        assert dagster_internal.stored_values(instance, ["a", "b", "c"]) == {"a": "1", "b": "2"}
        # The call Dagster answers (a renamed or re-typed parameter raises here).
        assert dagster_internal.stopped_schedules(instance) == set()
        parameters = inspect.signature(instance.all_instigator_state).parameters
        assert {"instigator_type", "instigator_statuses"} <= set(parameters)


def test_the_event_log_reads_the_latest_window_sensor_stands_on(tmp_path: Path) -> None:
    """Each asset's newest materialized partition in bulk, and the assets observed between two
    storage ids, as the event log holds them."""
    a, b, c = (dg.AssetKey(["affise", name, "clicks"]) for name in "abc")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert dagster_internal.newest_event_id(instance) == 0
        for key, partition in ((a, "2026-11-25-10:00"), (a, "2026-11-25-10:15"), (b, "x")):
            instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=partition))
        newest = dagster_internal.newest_materialized_partitions(instance, [a, b, c], chunk=2)
        assert newest == {a: "2026-11-25-10:15", b: "x"}
        before = dagster_internal.newest_event_id(instance)
        instance.report_runless_asset_event(dg.AssetObservation(b, partition="x"))
        instance.report_runless_asset_event(dg.AssetObservation(c))
        after = dagster_internal.newest_event_id(instance)
        assert after > before
        assert dagster_internal.observed_between(instance, before, after, 10) == {b, c}
        assert dagster_internal.observed_between(instance, after, after, 10) == set()
        assert dagster_internal.observed_between(instance, 0, before, 10) == set()
        assert dagster_internal.observed_between(instance, before, after, 1) is None
