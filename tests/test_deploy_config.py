"""The cluster deployment files (docs/scaling.md), checked with Dagster's own validation.

No network, no cluster: the instance file is validated the way `DagsterInstance.get()` (and so
every `dagster` CLI command) validates $DAGSTER_HOME/dagster.yaml, then each configured class
checks its own config; the Helm values are checked for the facts docs/scaling.md promises; and
every tag a queue limit keys on must be set on some run of the code location.
"""

import copy
import re
import shutil
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import dagster as dg
import dagster_k8s
import dagster_postgres
import psycopg2
import pytest
import sqlalchemy
import yaml
from dagster._config import process_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._core.instance.ref import InstanceRef
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._serdes.config_class import ConfigurableClassData, class_from_code_pointer
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from dagster_postgres.utils import get_conn_string

from affise_s3_assets.automation.catch_up import plan_catch_up
from affise_s3_assets.config.apply import load_integrations
from affise_s3_assets.config.schema import EVENT_TYPES
from affise_s3_assets.config.targets import build_export_targets, build_window_groups
from affise_s3_assets.definitions import build_definitions
from affise_s3_assets.instance_storage import (
    KeptConnectionsEventLogStorage,
    KeptConnectionsRunStorage,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DIR = ROOT / "deploy"
INSTANCE_YAML = DEPLOY_DIR / "dagster.yaml"
HELM_VALUES = DEPLOY_DIR / "helm-values.yaml"
SCALING_DOC = ROOT / "docs" / "scaling.md"
INTEGRATIONS_YAML = ROOT / "integrations.yaml"

MODULE_NAME = "affise_s3_assets.definitions"
FREQUENCY_TAG = "affise/frequency"
CATCH_UP_TAG = "affise/catch_up"
PER_VALUE = {"applyLimitPerUniqueValue": True}
# A UTC midnight after every start in integrations.yaml: a window boundary at every frequency.
AFTER_EVERY_START = datetime(2026, 12, 1, tzinfo=UTC)

# Fake values: the files must take every Postgres field from these variables.
PG_ENV = {
    "DAGSTER_PG_USERNAME": "dagster-test-user",
    "DAGSTER_PG_PASSWORD": "not-a-real-password",
    "DAGSTER_PG_HOST": "postgres.test.invalid",
    "DAGSTER_PG_DB": "dagster_test",
    "DAGSTER_PG_PORT": "5433",
}
# The deployment's bucket for run logs (compute_logs), also from the environment.
COMPUTE_LOGS_ENV = {"AFFISE_COMPUTE_LOGS_BUCKET": "dagster-compute-logs-test"}
COMPUTE_LOGS_PREFIX = "dagster/compute-logs"

# Runs and event logs through dagster-postgres's classes keeping their connections.
POSTGRES_STORAGES = {
    "run_storage": KeptConnectionsRunStorage,
    "event_log_storage": KeptConnectionsEventLogStorage,
    "schedule_storage": dagster_postgres.PostgresScheduleStorage,
}


@pytest.fixture
def pg_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every variable deploy/dagster.yaml reads: Postgres's and the compute-log bucket."""
    for name, value in {**PG_ENV, **COMPUTE_LOGS_ENV}.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def instance_config(pg_env: None) -> Mapping[str, Any]:
    """deploy/dagster.yaml as validated by Dagster's instance loader."""
    config, custom_instance_class = dagster_instance_config(str(DEPLOY_DIR))
    assert custom_instance_class is None
    return config


@pytest.fixture(scope="module")
def helm_values() -> Mapping[str, Any]:
    values = yaml.safe_load(HELM_VALUES.read_text())
    assert isinstance(values, dict)
    return values


def _user_deployment(helm_values: Mapping[str, Any]) -> Mapping[str, Any]:
    deployments = helm_values["dagster-user-deployments"]["deployments"]
    assert [d["name"] for d in deployments] == ["affise-s3-assets"]
    return deployments[0]


def _k8s_launcher_values(helm_values: Mapping[str, Any]) -> Mapping[str, Any]:
    launcher = helm_values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    return launcher["config"]["k8sRunLauncher"]


def _names(env_sources: list[Mapping[str, str]]) -> set[str]:
    return {source["name"] for source in env_sources}


def _env_value(env: list[Mapping[str, str]], name: str) -> str:
    (value,) = [item["value"] for item in env if item["name"] == name]
    return value


# --- (a) deploy/dagster.yaml through Dagster's instance validation -------------------------


def test_instance_yaml_passes_dagsters_instance_validation(
    instance_config: Mapping[str, Any],
) -> None:
    for section in (
        *POSTGRES_STORAGES,
        "run_launcher",
        "run_coordinator",
        "run_monitoring",
        "run_retries",
        "compute_logs",
    ):
        assert section in instance_config, f"deploy/dagster.yaml has no {section}"
    assert instance_config["telemetry"] == {"enabled": False}


def test_instance_validation_rejects_an_unknown_section(tmp_path: Path, pg_env: None) -> None:
    # The same check must fail on a broken file, or passing it above would prove nothing.
    broken = yaml.safe_load(INSTANCE_YAML.read_text())
    broken["run_launchr"] = broken.pop("run_launcher")
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(DagsterInvalidConfigError, match="run_launchr"):
        dagster_instance_config(str(tmp_path))


def test_run_launcher_is_dagster_k8s_k8s_run_launcher(instance_config: Mapping[str, Any]) -> None:
    launcher = instance_config["run_launcher"]
    klass = class_from_code_pointer(launcher["module"], launcher["class"])
    assert klass is dagster_k8s.K8sRunLauncher
    config = launcher["config"]
    assert config["load_incluster_config"] is True
    assert "affise-s3-credentials" in config["env_secrets"]
    assert config["postgres_password_secret"] == "dagster-postgresql-secret"


def test_storage_is_postgres_with_every_field_from_the_environment(
    instance_config: Mapping[str, Any],
) -> None:
    for section, expected in POSTGRES_STORAGES.items():
        storage = instance_config[section]
        assert class_from_code_pointer(storage["module"], storage["class"]) is expected
        db = storage["config"]["postgres_db"]
        assert db["username"] == {"env": "DAGSTER_PG_USERNAME"}
        assert db["password"] == {"env": "DAGSTER_PG_PASSWORD"}
        assert db["hostname"] == {"env": "DAGSTER_PG_HOST"}
        assert db["db_name"] == {"env": "DAGSTER_PG_DB"}
        assert db["port"] == {"env": "DAGSTER_PG_PORT"}


def test_queued_coordinator_limits_per_frequency_and_catch_up(
    instance_config: Mapping[str, Any],
) -> None:
    coordinator = instance_config["run_coordinator"]
    klass = class_from_code_pointer(coordinator["module"], coordinator["class"])
    assert klass is QueuedRunCoordinator
    config = coordinator["config"]
    max_runs = config["max_concurrent_runs"]
    assert max_runs > 0
    limits = {limit["key"]: limit for limit in config["tag_concurrency_limits"]}
    assert limits.keys() == {FREQUENCY_TAG, CATCH_UP_TAG}
    frequency = limits[FREQUENCY_TAG]
    assert frequency["value"] == PER_VALUE
    # Room for one window run per event type at a frequency, but never every slot.
    assert len(EVENT_TYPES) <= frequency["limit"] < max_runs
    catch_up = limits[CATCH_UP_TAG]
    assert catch_up["value"] == "1"
    assert 1 <= catch_up["limit"] < max_runs


def test_retries_only_for_crashed_run_workers(instance_config: Mapping[str, Any]) -> None:
    retries = instance_config["run_retries"]
    assert retries["enabled"] is True
    assert retries["max_retries"] >= 1
    assert retries["retry_on_asset_or_op_failure"] is False
    assert instance_config["run_monitoring"]["enabled"] is True


# --- (b) each configured class validates its own config -------------------------------------


def _configured_classes() -> dict[str, ConfigurableClassData]:
    """What the instance would rehydrate, as `InstanceRef.from_dir` builds it."""
    ref = InstanceRef.from_dir(str(DEPLOY_DIR))
    data = {
        "run_storage": ref.run_storage_data,
        "event_log_storage": ref.event_storage_data,
        "schedule_storage": ref.schedule_storage_data,
        "run_launcher": ref.run_launcher_data,
        "run_coordinator": ref.run_coordinator_data,
        "compute_logs": ref.compute_logs_data,
    }
    resolved = {name: value for name, value in data.items() if value is not None}
    assert resolved.keys() == data.keys()
    return resolved


def _process(data: ConfigurableClassData, config: Mapping[str, Any] | None = None) -> Any:
    klass = class_from_code_pointer(data.module_name, data.class_name)
    value = yaml.safe_load(data.config_yaml) if config is None else config
    return process_config(klass.config_type(), value or {})


@pytest.mark.parametrize(
    "section",
    [
        "run_storage",
        "event_log_storage",
        "schedule_storage",
        "run_launcher",
        "run_coordinator",
        "compute_logs",
    ],
)
def test_each_class_accepts_its_config(pg_env: None, section: str) -> None:
    result = _process(_configured_classes()[section])
    assert result.success, [error.message for error in result.errors or []]


def test_postgres_fields_resolve_from_the_environment(pg_env: None) -> None:
    for section in POSTGRES_STORAGES:
        result = _process(_configured_classes()[section])
        assert result.success
        db = result.value["postgres_db"]
        assert db["hostname"] == PG_ENV["DAGSTER_PG_HOST"]
        assert db["password"] == PG_ENV["DAGSTER_PG_PASSWORD"]
        assert db["port"] == int(PG_ENV["DAGSTER_PG_PORT"])


def test_postgres_url_names_a_driver_the_environment_installs(pg_env: None) -> None:
    # With SQLAlchemy 2 a bare postgresql:// means psycopg 3; dagster-postgres installs
    # psycopg2-binary only. The URL each storage would connect with must load its driver.
    for section in POSTGRES_STORAGES:
        db = _process(_configured_classes()[section]).value["postgres_db"]
        url = sqlalchemy.engine.make_url(get_conn_string(**db))
        assert url.drivername == "postgresql+psycopg2"
        assert url.get_dialect().import_dbapi() is psycopg2
        # The password reaches the driver, never the URL's printed form.
        assert PG_ENV["DAGSTER_PG_PASSWORD"] not in repr(url)


def test_storage_config_fails_without_its_env_var(
    pg_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_PG_HOST")
    result = _process(_configured_classes()["run_storage"])
    assert not result.success
    assert "DAGSTER_PG_HOST" in " ".join(error.message for error in result.errors or [])


def test_class_check_catches_a_typo_the_instance_check_lets_through(
    tmp_path: Path, pg_env: None
) -> None:
    # The instance schema treats each class's `config:` as free-form: only the class's own
    # config_type() sees a mistyped key. That is why the per-class test above exists.
    broken = yaml.safe_load(INSTANCE_YAML.read_text())
    coordinator = copy.deepcopy(broken["run_coordinator"]["config"])
    coordinator["max_concurent_runs"] = coordinator.pop("max_concurrent_runs")
    broken["run_coordinator"]["config"] = coordinator
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(broken))
    dagster_instance_config(str(tmp_path))
    result = _process(_configured_classes()["run_coordinator"], coordinator)
    assert not result.success
    assert "max_concurent_runs" in " ".join(error.message for error in result.errors or [])


def test_deploy_dir_is_a_usable_dagster_home(tmp_path: Path, pg_env: None) -> None:
    # Mounted as $DAGSTER_HOME/dagster.yaml, the file loads under its own name.
    shutil.copy(INSTANCE_YAML, tmp_path / "dagster.yaml")
    ref = InstanceRef.from_dir(str(tmp_path))
    assert ref.run_launcher_data is not None
    assert ref.run_launcher_data.class_name == "K8sRunLauncher"


# --- (c) the Helm values keep the promises of docs/scaling.md ------------------------------


def test_user_deployment_serves_this_code_location(helm_values: Mapping[str, Any]) -> None:
    assert helm_values["dagster-user-deployments"]["enabled"] is True
    deployment = _user_deployment(helm_values)
    # A code server, which re-imports the code on reload; `dagster api grpc` would not.
    assert "dagsterApiGrpcArgs" not in deployment
    assert deployment["codeServerArgs"] == [
        "--module-name",
        MODULE_NAME,
        "--location-name",
        deployment["name"],
    ]
    # The chart's workspace names the location after the deployment: that is what to reload.
    assert _env_value(deployment["env"], "AFFISE_CODE_LOCATION") == deployment["name"]
    assert _env_value(deployment["env"], "AFFISE_WEBSERVER_URL") == (
        "http://dagster-dagster-webserver:80"
    )
    (mount,) = [m for m in deployment["volumeMounts"] if m["name"] == "affise-integrations"]
    assert "subPath" not in mount  # a subPath mount never sees ConfigMap updates
    assert deployment["port"] == 3030
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["dagster"]["module_name"] == MODULE_NAME
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    assert [entry["python_module"]["module_name"] for entry in workspace["load_from"]] == [
        MODULE_NAME
    ]
    assert workspace["load_from"][0]["python_module"]["location_name"] == "affise_s3_assets"


def test_secrets_reach_user_code_and_every_run_pod(
    helm_values: Mapping[str, Any], instance_config: Mapping[str, Any]
) -> None:
    deployment_secrets = _names(_user_deployment(helm_values)["envSecrets"])
    launcher_secrets = _names(_k8s_launcher_values(helm_values)["envSecrets"])
    instance_secrets = set(instance_config["run_launcher"]["config"]["env_secrets"])
    assert "affise-s3-credentials" in deployment_secrets
    assert deployment_secrets == launcher_secrets == instance_secrets
    assert (
        helm_values["global"]["postgresqlSecretName"]
        == (instance_config["run_launcher"]["config"]["postgres_password_secret"])
    )


def test_integrations_file_comes_from_a_mounted_configmap(
    helm_values: Mapping[str, Any], instance_config: Mapping[str, Any]
) -> None:
    deployment = _user_deployment(helm_values)
    path = PurePosixPath(_env_value(deployment["env"], "AFFISE_INTEGRATIONS"))
    volumes = {volume["name"]: volume for volume in deployment["volumes"]}
    (mount,) = [
        m for m in deployment["volumeMounts"] if path.parent == PurePosixPath(m["mountPath"])
    ]
    assert volumes[mount["name"]]["configMap"]["name"] == "affise-integrations"
    assert mount["readOnly"] is True
    # The plain instance file gives run pods the same path and the same ConfigMap.
    launcher = instance_config["run_launcher"]["config"]
    assert f"AFFISE_INTEGRATIONS={path}" in launcher["env_vars"]
    (run_mount,) = [m for m in launcher["volume_mounts"] if m["mount_path"] == str(path.parent)]
    (run_volume,) = [v for v in launcher["volumes"] if v["name"] == run_mount["name"]]
    assert run_volume["config_map"]["name"] == "affise-integrations"


def test_events_database_location_is_configured_for_runs(
    helm_values: Mapping[str, Any], instance_config: Mapping[str, Any]
) -> None:
    # AFFISE_EVENTS_DB comes from this ConfigMap in user code and in run pods alike.
    env_map = "affise-s3-assets-env"
    assert env_map in _names(_user_deployment(helm_values)["envConfigMaps"])
    assert env_map in _names(_k8s_launcher_values(helm_values)["envConfigMaps"])
    assert env_map in instance_config["run_launcher"]["config"]["env_config_maps"]


def test_queue_limits_equal_the_instance_file(
    helm_values: Mapping[str, Any], instance_config: Mapping[str, Any]
) -> None:
    coordinator = helm_values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] is True
    assert coordinator["type"] == "QueuedRunCoordinator"
    queued = coordinator["config"]["queuedRunCoordinator"]
    expected = instance_config["run_coordinator"]["config"]
    assert queued["maxConcurrentRuns"] == expected["max_concurrent_runs"]
    assert queued["tagConcurrencyLimits"] == expected["tag_concurrency_limits"]
    # The chart copies these into dagster.yaml verbatim: they must pass the same class check.
    result = process_config(
        QueuedRunCoordinator.config_type(),
        {
            "max_concurrent_runs": queued["maxConcurrentRuns"],
            "tag_concurrency_limits": queued["tagConcurrencyLimits"],
        },
    )
    assert result.success, [error.message for error in result.errors or []]


def test_run_launcher_postgres_retries_and_home_match(
    helm_values: Mapping[str, Any], instance_config: Mapping[str, Any]
) -> None:
    launcher = instance_config["run_launcher"]["config"]
    assert _k8s_launcher_values(helm_values)["loadInclusterConfig"] is True
    assert helm_values["global"]["serviceAccountName"] == launcher["service_account_name"]
    assert helm_values["global"]["dagsterHome"] == launcher["dagster_home"]
    postgres = helm_values["postgresql"]
    assert postgres["enabled"] is False
    assert postgres["postgresqlHost"]
    assert postgres["postgresqlPassword"] == ""
    assert helm_values["generatePostgresqlPasswordSecret"] is False
    daemon = helm_values["dagsterDaemon"]
    retries = instance_config["run_retries"]
    assert daemon["runRetries"]["enabled"] is retries["enabled"]
    assert daemon["runRetries"]["maxRetries"] == retries["max_retries"]
    assert daemon["runMonitoring"]["enabled"] is True
    assert helm_values["telemetry"] == {"enabled": False}


def test_compute_logs_go_to_the_deployments_bucket_in_both_files(
    helm_values: Mapping[str, Any], instance_config: Mapping[str, Any]
) -> None:
    """Run pods are gone after their run: each run's stdout/stderr goes to one S3 bucket,
    named by the same variable and under the same prefix whether the chart renders the
    instance or deploy/dagster.yaml is mounted; no endpoint, no credentials in either file."""
    section = instance_config["compute_logs"]
    klass = class_from_code_pointer(section["module"], section["class"])
    assert klass is S3ComputeLogManager
    config = section["config"]
    assert config == {
        "bucket": {"env": "AFFISE_COMPUTE_LOGS_BUCKET"},
        "prefix": COMPUTE_LOGS_PREFIX,
        "upload_interval": config["upload_interval"],
    }
    assert 0 < config["upload_interval"] <= 60  # a running run's logs show while it runs
    chart = helm_values["computeLogManager"]
    assert chart["type"] == "S3ComputeLogManager"
    assert chart["config"] == {
        "s3ComputeLogManager": {
            "bucket": config["bucket"],
            "prefix": config["prefix"],
            "uploadInterval": config["upload_interval"],
        }
    }
    # What the chart's template writes (camelCase to the class's keys) passes the class check.
    s3 = chart["config"]["s3ComputeLogManager"]
    rendered = {
        "bucket": s3["bucket"],
        "prefix": s3["prefix"],
        "upload_interval": s3["uploadInterval"],
    }
    result = process_config(S3ComputeLogManager.config_type(), rendered)
    assert result.success, [error.message for error in result.errors or []]
    assert result.value["bucket"] == COMPUTE_LOGS_ENV["AFFISE_COMPUTE_LOGS_BUCKET"]
    # Every pod that loads the instance gets the variable, from the ConfigMap that holds it.
    env_map = "affise-s3-assets-env"
    for pods in (
        helm_values["dagsterWebserver"],
        helm_values["dagsterDaemon"],
        _user_deployment(helm_values),
        _k8s_launcher_values(helm_values),
    ):
        assert env_map in _names(pods["envConfigMaps"])
    assert env_map in instance_config["run_launcher"]["config"]["env_config_maps"]
    assert "AFFISE_COMPUTE_LOGS_BUCKET" in INSTANCE_YAML.read_text().split("\n\n")[0]
    assert "AFFISE_COMPUTE_LOGS_BUCKET" in HELM_VALUES.read_text().split("\n\n")[0]
    # The doc names the bucket and what the deployment's role may do in it.
    doc = SCALING_DOC.read_text()
    for word in (
        "AFFISE_COMPUTE_LOGS_BUCKET",
        COMPUTE_LOGS_PREFIX,
        "s3:PutObject",
        "s3:GetObject",
        "s3:ListBucket",
    ):
        assert word in doc


def test_scaling_doc_names_the_files_and_the_tags(instance_config: Mapping[str, Any]) -> None:
    doc = SCALING_DOC.read_text()
    for name in (
        "deploy/dagster.yaml",
        "deploy/helm-values.yaml",
        "deploy/Dockerfile",
        "tests/test_deploy_config.py",
        "scripts/prod-local.sh",
        "tests/test_production.py",
    ):
        assert name in doc
    for limit in instance_config["run_coordinator"]["config"]["tag_concurrency_limits"]:
        assert f"`{limit['key']}`" in doc, f"docs/scaling.md does not explain {limit['key']}"
    for secret in instance_config["run_launcher"]["config"]["env_secrets"]:
        assert secret in doc


# --- (d) the limits key on tags that runs of the code location really carry -----------------


def _run_tag_keys() -> set[str]:
    """Tag keys on the runs the code location creates: each job's tags merged with the tags of
    the run requests its schedules and the catch-up sensor make for it."""
    defs = build_definitions(INTEGRATIONS_YAML)
    repo = defs.get_repository_def()
    jobs = {job.name: job for job in repo.get_all_jobs()}
    requests: list[tuple[str, dg.RunRequest]] = []
    with dg.instance_for_test() as instance:
        for schedule in repo.schedule_defs:
            # Entered, so that the instance the context opens is closed again.
            with dg.build_schedule_context(
                instance=instance, scheduled_execution_time=AFTER_EVERY_START, repository_def=repo
            ) as context:
                (request,) = schedule.evaluate_tick(context).run_requests or []
            requests.append((schedule.job_name, request))
    targets = build_export_targets(load_integrations(INTEGRATIONS_YAML).integrations)
    live = [group for group in build_window_groups(targets) if group.live]
    catch_up, _ = plan_catch_up(live, {}, AFTER_EVERY_START)
    assert catch_up
    requests.extend((request.job_name, request) for request in catch_up)
    keys = {key for job in jobs.values() for key in job.tags}
    for job_name, request in requests:
        keys |= {*jobs[job_name].tags, *request.tags}
    return keys


@pytest.mark.filterwarnings("ignore::dagster.BetaWarning")
def test_every_limited_tag_is_set_on_some_run(instance_config: Mapping[str, Any]) -> None:
    keys = _run_tag_keys()
    for limit in instance_config["run_coordinator"]["config"]["tag_concurrency_limits"]:
        assert limit["key"] in keys, f"no job, schedule or sensor run sets {limit['key']}"
    # Window runs span many integrations and buckets: a limit on these would match nothing.
    assert not keys & {"affise/integration", "affise/bucket"}


def test_the_demo_instance_fails_runs_whose_worker_died(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dagster dev`'s launcher cannot check a run worker's health: without a maximum runtime
    a run killed with -9 stays STARTED for ever and its windows are never re-delivered."""
    shutil.copy(ROOT / "scripts" / "dagster.dev.yaml", tmp_path / "dagster.yaml")
    # As `dagster dev` runs it: the instance's settings name its home (the event log's files).
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_monitoring_enabled
        assert 0 < instance.run_monitoring_max_runtime_seconds <= 3600
        assert 0 < instance.run_monitoring_start_timeout_seconds <= 300
        assert instance.run_monitoring_max_resume_run_attempts == 0


def test_every_test_the_readme_cites_for_a_guarantee_exists() -> None:
    section = (ROOT / "docs" / "design.md").read_text().split("## Guarantees")[1].split("\n## ")[0]
    cited = 0
    for row in section.splitlines():
        current = None
        for match in re.finditer(r"`(?:(test_\w+\.py))?::(test_\w+)`|`(test_\w+\.py)` ", row):
            if match.group(3):
                current = match.group(3)
                continue
            current = match.group(1) or current
            assert current is not None, row
            text = (ROOT / "tests" / current).read_text()
            assert f"def {match.group(2)}(" in text, f"{current}::{match.group(2)}"
            cited += 1
    assert cited >= 15


def test_the_last_applied_config_outlives_the_code_server_pod(
    helm_values: Mapping[str, Any],
) -> None:
    deployment = _user_deployment(helm_values)
    path = PurePosixPath(_env_value(deployment["env"], "AFFISE_STATE_DIR"))
    (mount,) = [m for m in deployment["volumeMounts"] if PurePosixPath(m["mountPath"]) == path]
    volumes = {volume["name"]: volume for volume in deployment["volumes"]}
    claim = yaml.safe_load((DEPLOY_DIR / "state-pvc.yaml").read_text())
    assert claim["kind"] == "PersistentVolumeClaim"
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "readOnly" not in mount


def test_the_image_installs_what_the_instance_imports(helm_values: Mapping[str, Any]) -> None:
    """Every pod of the chart runs the user-code image and loads deploy/dagster.yaml: the image
    installs the package's `deploy` extra, which holds each distribution the instance imports
    beyond the package's own dependencies (dagster-aws), pinned to the Dagster release of the
    rest."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"]["deploy"]
    pins = dict(requirement.split("==") for requirement in extra)
    config = yaml.safe_load(INSTANCE_YAML.read_text())
    imported = {
        section["module"].split(".")[0].replace("_", "-")
        for section in config.values()
        if isinstance(section, dict) and "module" in section
    }
    # dagster-aws (the compute log manager) is a dependency of the package itself.
    (aws,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("dagster-aws==")]
    assert "dagster-aws" in imported
    assert imported - {"dagster", "affise-s3-assets", "dagster-aws"} == pins.keys()
    assert set(pins.values()) == {aws.split("==")[1]}
    dockerfile = (DEPLOY_DIR / "Dockerfile").read_text()
    assert '"affise-s3-assets[deploy] @ file://' in dockerfile
    assert "--extra deploy" in dockerfile and "uv.lock" in dockerfile
    assert "deploy/Dockerfile" in HELM_VALUES.read_text()
    python = re.search(r"^FROM python:(\d+\.\d+)", dockerfile, re.MULTILINE)
    assert python is not None
    assert pyproject["project"]["requires-python"].startswith(f">={python.group(1)}")


def test_sensors_run_side_by_side_in_both_files(
    instance_config: Mapping[str, Any], helm_values: Mapping[str, Any]
) -> None:
    """A sensor whose tick waits on a customer's webhook never holds up catch_up_sensor."""
    for section in ("sensors", "schedules"):
        assert instance_config[section]["use_threads"] is True
        daemon = helm_values["dagsterDaemon"][section]
        assert daemon["useThreads"] is True
        assert daemon["numWorkers"] == instance_config[section]["num_workers"] >= 2
