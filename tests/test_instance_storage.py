"""The deployment's Postgres storages (affise_s3_assets/instance_storage.py) keep their
connections between events, and ride out a Postgres restart; `dagster dev`'s SQLite event log
keeps one per database file.

A real Postgres from Debian's packages, started by scripts/prod-local.sh; the instance is the
one that script writes from deploy/dagster.yaml, so the shipped classes are the ones proven.
The SQLite instance is scripts/dagster.dev.yaml's."""

import ast
import hashlib
import inspect
import os
import shutil
import socket
import sqlite3.dbapi2
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage
from sqlalchemy import event as sqlalchemy_event

from affise_s3_assets import instance_storage
from affise_s3_assets.instance_storage import (
    KeptConnectionsEventLogStorage,
    KeptConnectionsRunStorage,
    KeptConnectionsSqliteEventLogStorage,
)
from tests.conftest import ROOT

EVENTS = 40


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    port = str(free_port())
    env = {
        "AFFISE_PROD_HOME": str(tmp_path / "prod"),
        "DAGSTER_PG_PORT": port,
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_USERNAME": "dagster",
        "DAGSTER_PG_DB": "dagster",
        "DAGSTER_PG_PASSWORD": "storage-test-password",
    }
    if os.geteuid() == 0:  # the postgres user must reach the cluster's directory
        env["AFFISE_PROD_PG_DIR"] = f"/var/lib/postgresql/affise-storage-test-{port}"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    script = ["bash", str(ROOT / "scripts" / "prod-local.sh")]
    subprocess.run([*script, "start", "postgres"], check=True, capture_output=True)
    try:
        home = subprocess.run(
            [*script, "config"], check=True, capture_output=True, text=True
        ).stdout.split()[-1]
        env["DAGSTER_HOME"] = str(Path(home).parent)
        yield env
    finally:
        subprocess.run([*script, "stop", "postgres"], check=False, capture_output=True)
        if "AFFISE_PROD_PG_DIR" in env:
            subprocess.run(["rm", "-rf", env["AFFISE_PROD_PG_DIR"]], check=False)


def sessions(env: dict[str, str]) -> int:
    """Connections the server has accepted into the database so far."""
    with (
        psycopg2.connect(
            host="127.0.0.1",
            port=env["DAGSTER_PG_PORT"],
            user=env["DAGSTER_PG_USERNAME"],
            password=env["DAGSTER_PG_PASSWORD"],
            dbname=env["DAGSTER_PG_DB"],
        ) as con,
        con.cursor() as cursor,
    ):
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        (count,) = cursor.fetchone()
    con.close()
    return count


def materialize(instance: dg.DagsterInstance, key: str, count: int) -> None:
    for i in range(count):
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key=key, partition=f"window-{i:03d}")
        )


def test_the_deployments_storages_keep_their_connections_and_ride_out_a_restart(
    postgres: dict[str, str],
) -> None:
    with dg.DagsterInstance.from_config(postgres["DAGSTER_HOME"]) as instance:
        assert isinstance(instance.event_log_storage, KeptConnectionsEventLogStorage)
        assert isinstance(instance.run_storage, KeptConnectionsRunStorage)
        before = sessions(postgres)
        materialize(instance, "kept", EVENTS)
        opened = sessions(postgres) - before - 1  # less our own count's session
        records = instance.fetch_materializations(dg.AssetKey("kept"), limit=100).records
        assert sorted(r.partition_key for r in records) == [
            f"window-{i:03d}" for i in range(EVENTS)
        ]
        assert opened <= 2, f"{opened} connections for {EVENTS} events"

        # Postgres restarted under a live process: its kept connection is found dead before
        # use and replaced, and no event is lost.
        script = ["bash", str(ROOT / "scripts" / "prod-local.sh")]
        subprocess.run([*script, "stop", "postgres"], check=True, capture_output=True)
        subprocess.run([*script, "start", "postgres"], check=True, capture_output=True)
        materialize(instance, "after_restart", 1)
        (record,) = instance.fetch_materializations(dg.AssetKey("after_restart"), limit=5).records
        assert record.partition_key == "window-000"

    # Dagster's own classes, on the same server: a connection per statement.
    url = (
        f"postgresql+psycopg2://{postgres['DAGSTER_PG_USERNAME']}:"
        f"{postgres['DAGSTER_PG_PASSWORD']}@127.0.0.1:{postgres['DAGSTER_PG_PORT']}/"
        f"{postgres['DAGSTER_PG_DB']}"
    )
    overrides = {"storage": {"postgres": {"postgres_url": url}}}
    with dg.instance_for_test(overrides=overrides) as stock:
        assert type(stock.event_log_storage) is PostgresEventLogStorage
        before = sessions(postgres)
        materialize(stock, "stock", 10)
        assert sessions(postgres) - before - 1 >= 20


# Dagster's `PostgresEventLogStorage.store_event` as KeptConnectionsEventLogStorage's copy
# follows it; a new Dagster that changes it fails the test below until the copy is looked at.
DAGSTER_STORE_EVENT = "4a2e37e5871bf2c8"

DAYS = dg.DailyPartitionsDefinition(start_date="2026-11-01")


def partitioned_asset(name: str) -> dg.AssetsDefinition:
    @dg.asset(name=name, partitions_def=DAYS)
    def window() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"rows": 3})

    return window


def what_dagster_reads(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, object]:
    """An asset's rows as the UI and the sensors read them: the event, its tags, its asset row."""
    (record,) = instance.get_asset_records([key])
    entry = record.asset_entry
    latest = instance.get_latest_materialization_event(key)
    planned = instance.get_latest_planned_materialization_info(key)
    return {
        "partitions": sorted(instance.get_materialized_partitions(key)),
        "latest partition": latest.dagster_event.partition if latest else None,
        "latest is the asset row's": entry.last_materialization_record.storage_id
        == instance.fetch_materializations(key, limit=1).records[0].storage_id,
        "last run is the latest's": entry.last_run_id == latest.run_id if latest else None,
        "planned in the last run": planned.run_id == entry.last_run_id if planned else None,
        # The tags' names per event (their values name the run's data version).
        "tags": sorted(sorted(tags) for tags in instance.get_event_tags_for_asset(key)),
    }


def test_the_deployments_event_log_writes_dagsters_rows_in_one_transaction_per_event(
    postgres: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeptConnectionsEventLogStorage.store_event writes what Dagster's writes, with one commit
    per event and no NOTIFY; and it still follows Dagster's method."""
    source = inspect.getsource(PostgresEventLogStorage.store_event)
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == DAGSTER_STORE_EVENT, (
        "dagster-postgres changed store_event: compare KeptConnectionsEventLogStorage's copy"
    )
    url = (
        f"postgresql+psycopg2://{postgres['DAGSTER_PG_USERNAME']}:"
        f"{postgres['DAGSTER_PG_PASSWORD']}@127.0.0.1:{postgres['DAGSTER_PG_PORT']}/"
        f"{postgres['DAGSTER_PG_DB']}"
    )
    seen = {}
    kept_storages = {
        name: {
            "module": "affise_s3_assets.instance_storage",
            "class": cls,
            "config": {"postgres_url": url},
        }
        for name, cls in (
            ("run_storage", "KeptConnectionsRunStorage"),
            ("event_log_storage", "KeptConnectionsEventLogStorage"),
        )
    }
    taken: list[object] = []
    connect = instance_storage.create_pg_connection

    def counted(engine: object) -> object:
        taken.append(engine)
        return connect(engine)

    monkeypatch.setattr(instance_storage, "create_pg_connection", counted)
    with dg.instance_for_test(overrides=kept_storages) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, KeptConnectionsEventLogStorage)
        statements: list[str] = []
        commits: list[int] = []
        for engine in (storage._engine, storage._events_engine):
            sqlalchemy_event.listen(
                engine, "before_cursor_execute", lambda *a: statements.append(a[2])
            )
            sqlalchemy_event.listen(engine, "commit", lambda *a: commits.append(1))
        kept = partitioned_asset("kept_rows")
        for day in ("2026-11-01", "2026-11-02", "2026-11-03"):
            assert dg.materialize([kept], instance=instance, partition_key=day).success
        assert not [s for s in statements if "NOTIFY" in s]
        asset_events = sum(
            1
            for run in instance.get_runs()
            for e in instance.all_logs(run.run_id)
            if e.dagster_event is not None and e.dagster_event.asset_key == kept.key
        )
        # The planned materialization and the materialization of each run: one commit each
        # (the run's other events are committed by the server, one statement each).
        assert asset_events == 6
        assert len(commits) == asset_events
        seen["kept"] = what_dagster_reads(instance, kept.key)
        # Its connections are taken as Dagster takes its own (retried while Postgres cannot
        # be reached).
        assert taken and len(taken) >= asset_events
        # As the webserver runs it: asset events too under the webserver's statement timeout.
        storage.optimize_for_webserver(statement_timeout=4321, pool_recycle=3600, max_overflow=5)
        with storage._events_engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "4321ms"
        assert storage._events_engine.pool._pre_ping  # checked before use, as everywhere
        materialize(instance, "after_optimize", 1)
        (record,) = instance.fetch_materializations(dg.AssetKey("after_optimize"), limit=5).records
        assert record.partition_key == "window-000"
    with dg.instance_for_test(overrides={"storage": {"postgres": {"postgres_url": url}}}) as stock:
        assert type(stock.event_log_storage) is PostgresEventLogStorage
        dagsters = partitioned_asset("dagsters_rows")
        for day in ("2026-11-01", "2026-11-02", "2026-11-03"):
            assert dg.materialize([dagsters], instance=stock, partition_key=day).success
        seen["dagster"] = what_dagster_reads(stock, dagsters.key)
    assert seen["kept"] == seen["dagster"]
    assert seen["kept"]["partitions"] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert seen["kept"]["latest partition"] == "2026-11-03"


@dg.asset
def delivered() -> None:
    """A run's own events: its database is created on first use, then kept open."""


def counted_connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQLite connection opened from now on (the database file it opens)."""
    opened: list[str] = []
    connect = sqlite3.dbapi2.connect  # what SQLAlchemy's pysqlite dialect calls

    def counting(database: str, *args: object, **kwargs: object) -> sqlite3.Connection:
        opened.append(str(database))
        return connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3.dbapi2, "connect", counting)
    return opened


def test_dagster_devs_sqlite_event_log_keeps_a_connection_per_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "scripts" / "dagster.dev.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, KeptConnectionsSqliteEventLogStorage)
        # Where Dagster's default storage keeps them: an instance switched keeps its history.
        assert Path(storage._base_dir) == home / "history" / "runs"
        opened = counted_connects(monkeypatch)
        # The first event opens its databases (Dagster's check of their tables, on
        # connections of its own, then the kept one); the next ones open none.
        materialize(instance, "first", 1)
        assert opened
        del opened[:]
        materialize(instance, "kept", EVENTS)
        assert opened == [], f"{len(opened)} connections for {EVENTS} events"
        with storage.index_connection() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        # A run creates its own database on first use (Dagster's table creation, on a
        # connection of its own), then keeps it too.
        result = dg.materialize([delivered], instance=instance)
        assert result.success
        run_file = home / "history" / "runs" / f"{result.run_id}.db"
        logged = [e for e in instance.all_logs(result.run_id) if e.dagster_event is not None]
        assert any(e.dagster_event.is_step_materialization for e in logged)
        # Its creation's few, then one kept: Dagster's own opens one per event at least.
        assert 1 <= opened.count(str(run_file)) <= 5 < len(logged)

        # Committed for every other process: another instance on the same home reads all of it.
        with dg.DagsterInstance.from_config(str(home)) as other:
            records = other.fetch_materializations(dg.AssetKey("kept"), limit=100).records
            assert sorted(r.partition_key for r in records) == [
                f"window-{i:03d}" for i in range(EVENTS)
            ]
            (record,) = other.fetch_materializations(dg.AssetKey("delivered"), limit=5).records
            assert record.run_id == result.run_id

        # Wiping deletes the runs' files, the one kept open here too: the next run's events
        # land in a file of their own, and are all read back.
        instance.wipe()
        assert not run_file.exists()
        again = dg.materialize([delivered], instance=instance)
        assert again.success
        (record,) = instance.fetch_materializations(dg.AssetKey("delivered"), limit=5).records
        assert record.run_id == again.run_id
        assert any(
            e.dagster_event is not None and e.dagster_event.is_step_materialization
            for e in instance.all_logs(again.run_id)
        )

    # Dagster's own class, on the same files: a connection per statement batch.
    (tmp_path / "stock").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "stock")) as stock:
        assert type(stock.event_log_storage) is SqliteEventLogStorage
        opened = counted_connects(monkeypatch)
        materialize(stock, "stock", 10)
        assert len(opened) >= 20


def test_a_run_written_through_kept_connections_is_watched_live(tmp_path: Path) -> None:
    """The UI's live run log is Dagster's watch of the run's file: a commit on a kept
    connection (into the write-ahead log) must still wake it, in another process's storage."""
    writer = KeptConnectionsSqliteEventLogStorage(str(tmp_path))
    reader = KeptConnectionsSqliteEventLogStorage(str(tmp_path))  # the webserver's
    seen: list[str] = []
    try:
        reader.watch("run-1", None, lambda event, _cursor: seen.append(event.user_message))
        # One event at a time, each waited for: every commit must wake the watch, not only
        # the file's creation.
        for i in range(5):
            writer.store_event(
                EventLogEntry(
                    error_info=None,
                    level="INFO",
                    user_message=f"event {i}",
                    run_id="run-1",
                    timestamp=time.time(),
                )
            )
            deadline = time.monotonic() + 15
            while len(seen) <= i and time.monotonic() < deadline:
                time.sleep(0.05)
            assert seen == [f"event {n}" for n in range(i + 1)]
    finally:
        reader.dispose()
        writer.dispose()


def test_the_private_parts_of_dagsters_storages_used_here_still_exist() -> None:
    """Every private method or attribute instance_storage.py reaches on Dagster's storage
    classes (`self._x`, `storage._x`, `super()._x`) is still defined by Dagster: a method on the
    class, or an attribute its `__init__` sets. An upgrade that renames one fails here rather
    than in a deployment's run worker."""
    import affise_s3_assets.instance_storage as module

    tree = ast.parse(inspect.getsource(module))
    ours = {
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for item in node.body
        for name in (
            [item.name]
            if isinstance(item, ast.FunctionDef)
            else [
                t.id
                for t in getattr(item, "targets", [getattr(item, "target", None)])
                if isinstance(t, ast.Name)
            ]
        )
    }
    ours |= {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }
    reached = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and (
            (isinstance(node.value, ast.Name) and node.value.id in ("self", "storage"))
            or (isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "super")
        )
    } - ours
    assert {"_store_asset_event", "_store_asset_event_tags", "_initdb"} <= reached
    # What the module overrides or sets by Dagster's own names: they must still be Dagster's,
    # or an override silently becomes a method nobody calls.
    reached |= {"_connect", "_engine", "_has_asset_key_index_cols_on_connection"}
    dagsters = (PostgresEventLogStorage, PostgresRunStorage, SqliteEventLogStorage)
    inits = "".join(
        inspect.getsource(klass.__init__)
        for cls in dagsters
        for klass in cls.__mro__
        if "__init__" in vars(klass) and klass.__module__.startswith("dagster")
    )
    missing = {
        name
        for name in reached
        if not any(hasattr(cls, name) for cls in dagsters) and f"self.{name} =" not in inits
    }
    assert not missing, f"Dagster's storages no longer define: {sorted(missing)}"
