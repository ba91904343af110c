"""Dagster's event-log and run storages, keeping their connections between statements.

dagster-postgres opens a new connection for every statement batch it runs (SQLAlchemy's
NullPool): each event a run logs costs two or three Postgres connects (a backend process each),
and a window run logs two events per integration (the planned materialization at its creation,
the materialization as its object lands). These subclasses hold small pools per process
instead: one connection kept open per pool (the run storage's; the event log's for reads and
other events, and for asset events), a few more while threads need them, each checked before
use (a restarted Postgres costs a reconnect, never an error) and recycled hourly. Statements
and tables are Dagster's own; an asset event's rows are written in one transaction rather
than two (`KeptConnectionsEventLogStorage.store_event`).

The instance names them in its dagster.yaml (`deploy/dagster.yaml`: the daemon, the code
server and every run worker; the webserver swaps in a pool of its own, as Dagster does for
every storage it serves); the definitions never import this module. Like `dagster_internal.py` it
stands on Dagster's private storage modules, and `tests/test_instance_storage.py` fails when an
upgrade moves them. Knows nothing of deliveries.

`dagster dev`'s SQLite event log (`scripts/dagster.dev.yaml`) does the same per database file:
Dagster's opens and closes a connection, and builds a new engine (so compiles every statement
again), for each of the two or three statements an event costs.
"""

import contextlib
import os
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as db
from dagster import StringSource
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.utils import (
    create_pg_connection,
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
    set_pg_statement_timeout,
)

from affise_s3_assets.dagster_internal import (
    ASSET_CHECK_EVENTS,
    ASSET_EVENTS,
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    ConfigurableClassData,
    PostgresStorageConfig,
    SqlEventLogStorageTable,
    SqliteEventLogStorage,
)

# Kept open per process and pool; more are opened (and closed again) while threads need them
# at once. A deployment's connections: about three per process (runs; events; asset events).
KEPT_CONNECTIONS = 1
EXTRA_CONNECTIONS = 20  # as many as Dagster's webserver allows itself
RECYCLE_SECONDS = 3600

_engines: "weakref.WeakSet[db.engine.Engine]" = weakref.WeakSet()


def _forget_connections_after_fork() -> None:
    # A forked child must not use its parent's sockets: it opens its own.
    for engine in list(_engines):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_connections_after_fork)


def pooled_engine(
    postgres_url: str, token_provider: Any = None, isolation_level: str = "AUTOCOMMIT"
) -> db.engine.Engine:
    """An engine keeping KEPT_CONNECTIONS open, in Dagster's autocommit mode unless told."""
    engine = create_pg_engine(
        postgres_url,
        token_provider,
        isolation_level=isolation_level,
        poolclass=db.pool.QueuePool,
        pool_size=KEPT_CONNECTIONS,
        max_overflow=EXTRA_CONNECTIONS,
        pool_pre_ping=True,
        pool_recycle=RECYCLE_SECONDS,
    )
    _engines.add(engine)
    return engine


def _keep_connections(storage: Any) -> None:
    """Swap the storage's per-statement engine (used to create its tables) for a pooled one."""
    storage._engine.dispose()
    storage._engine = pooled_engine(storage.postgres_url, storage._token_provider)


def _arguments(inst_data: ConfigurableClassData | None, config: PostgresStorageConfig) -> dict:
    """What dagster-postgres's own `from_config_value` passes its storages."""
    return {
        "inst_data": inst_data,
        "postgres_url": pg_url_from_config(config),
        "should_autocreate_tables": config.get("should_autocreate_tables", True),
        "token_provider": get_token_provider_from_config(config),
    }


class _KeptConnections:
    """Keeps the storage's connections: a pooled engine from its creation on, closed with it."""

    _engine: db.engine.Engine

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _keep_connections(self)

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Any) -> Any:
        return cls(**_arguments(inst_data, config_value))

    def dispose(self) -> None:
        # The code server builds an instance per sensor and schedule evaluation: its kept
        # connection closes with it, not whenever the garbage collector finds the pool.
        super().dispose()  # type: ignore[misc]
        self._engine.dispose()


class _KnownColumns:
    """Dagster's SQLite event log asks the database for the asset table's columns (a PRAGMA
    and its parsing, a tenth of the time an event took) for every asset event it stores, to
    know whether the index columns exist. They come with `dagster instance migrate`, after
    which every process restarts: once found, they are taken as there."""

    _asset_key_index_cols = False

    def _has_asset_key_index_cols_on_connection(self, conn: db.engine.Connection) -> bool:
        if not self._asset_key_index_cols:
            self._asset_key_index_cols = super()._has_asset_key_index_cols_on_connection(conn)  # type: ignore[misc]
        return self._asset_key_index_cols


class KeptConnectionsEventLogStorage(_KeptConnections, PostgresEventLogStorage):
    """`PostgresEventLogStorage`, its connections kept between events, and each event stored
    in one transaction on one connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Asset events are stored through connections of their own, in transactions from the
        # start: switching a kept autocommit connection into a transaction and back costs
        # each event two more calls into SQLAlchemy and the driver.
        self._events_engine = pooled_engine(
            self.postgres_url, self._token_provider, isolation_level="READ COMMITTED"
        )

    def store_event(self, event: Any) -> None:
        """Dagster's `PostgresEventLogStorage.store_event` (dagster-postgres 0.29.27), the same
        rows written: the event's, then for an asset event its tags and its asset's row.
        Dagster commits the event's row on its own, sends a `NOTIFY` that no process of this
        Dagster version listens to (dagster-postgres keeps it for older webservers), then takes
        a second connection for the index rows' transaction: four round trips and two commits
        (two syncs of Postgres' log) besides the rows. Here an asset event's rows are one
        transaction on one connection, seen together or not at all; each connection is taken
        as Dagster takes its own (retried while Postgres cannot be reached).

        An event's storage id is drawn when its row is inserted and seen once its transaction
        commits: as with any Postgres sequence, events written by different processes at once
        can become visible out of their ids' order, here for the time of one transaction (a few
        round trips; Dagster's own is one statement). automation/freshness.py reads the ids
        just behind its cursor again; automation/notify.py reads each export from its last id,
        so two runs writing one export's events at once (a catch-up beside a scheduled run) can
        hide one of them from it, until that export's next failure or delivery.
        `tests/test_instance_storage.py` fails when an upgrade changes Dagster's method, so
        that this copy is looked at again."""
        insert = self.prepare_insert_event(event).returning(SqlEventLogStorageTable.c.id)
        dagster_event = event.dagster_event
        if (
            dagster_event is not None
            and dagster_event.event_type in ASSET_EVENTS
            and dagster_event.asset_key is not None
        ):
            with create_pg_connection(self._events_engine) as conn, conn.begin():
                event_id = int(conn.execute(insert).scalar_one())
                self._store_asset_event_tags(conn, [event], [event_id])
                self._store_asset_event(conn, event, event_id)
        else:
            with self._connect() as conn:
                event_id = int(conn.execute(insert).scalar_one())
        if dagster_event is not None and dagster_event.event_type in ASSET_CHECK_EVENTS:
            self.store_asset_check_event(event, event_id)

    def optimize_for_webserver(
        self, statement_timeout: int, pool_recycle: int, max_overflow: int
    ) -> None:
        # Dagster gives the webserver's reads a pool of its own with a statement timeout; the
        # asset events the webserver writes (the planned ones of a run launched from the UI)
        # get the same.
        self._engine.dispose()  # the pooled one Dagster's method replaces
        super().optimize_for_webserver(statement_timeout, pool_recycle, max_overflow)
        self._events_engine.dispose()
        self._events_engine = create_pg_engine(
            self.postgres_url,
            self._token_provider,
            isolation_level="READ COMMITTED",
            pool_size=1,
            pool_recycle=pool_recycle,
            max_overflow=max_overflow,
            pool_pre_ping=True,
        )
        _engines.add(self._events_engine)
        db.event.listen(
            self._events_engine,
            "connect",
            lambda connection, _: set_pg_statement_timeout(connection, statement_timeout),
        )

    def dispose(self) -> None:
        super().dispose()
        self._events_engine.dispose()


class KeptConnectionsRunStorage(_KeptConnections, PostgresRunStorage):
    """`PostgresRunStorage`, its connections kept between statements."""


# Database files of the SQLite event log kept open per process: the index (every asset event
# is mirrored there) and the latest runs' (a run worker writes one; the webserver reads many).
KEPT_RUN_FILES = 8


def _synchronous_normal(dbapi_connection: Any, _: Any) -> None:
    # Dagster's files are in WAL mode, where SQLite's default (FULL) syncs the log at every
    # commit, two per event. NORMAL syncs it at checkpoints: a crash of the process loses
    # nothing, a power loss may lose the last events (never the file): their windows are
    # then undelivered in the instance's eyes, and delivered again under the same keys.
    dbapi_connection.execute("PRAGMA synchronous = NORMAL")


class KeptConnectionsSqliteEventLogStorage(_KnownColumns, SqliteEventLogStorage):
    """`SqliteEventLogStorage` (one database per run beside an index database), a connection
    kept open per database (the index, and the latest KEPT_RUN_FILES runs') between events
    instead of an engine and a connection per statement batch. Statements, transactions,
    locking (one at a time per process, SQLite's busy timeout between processes) and files are
    Dagster's own.

    Configured with the instance's home (`dagster_home: {env: DAGSTER_HOME}`); the databases
    are where Dagster's default storage keeps them, `<home>/history/runs/`, so an instance
    switched to this class keeps its history.
    """

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._kept: OrderedDict[str, db.engine.Engine] = OrderedDict()
        super().__init__(base_dir, inst_data)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"dagster_home": StringSource}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Any
    ) -> "KeptConnectionsSqliteEventLogStorage":
        base_dir = os.path.join(config_value["dagster_home"], "history", "runs")
        return cls(base_dir, inst_data)

    def _engine(self, shard: str, **pool: Any) -> db.engine.Engine:
        return db.create_engine(
            self.conn_string_for_shard(shard),
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
            **pool,
        )

    def _kept_engine(self, shard: str) -> db.engine.Engine:
        engine = self._kept.pop(shard, None)
        if engine is None:
            # One connection: this storage runs one statement batch at a time (_db_lock).
            engine = self._engine(shard, poolclass=db.pool.QueuePool, pool_size=1, max_overflow=0)
            db.event.listen(engine, "connect", _synchronous_normal)
            _engines.add(engine)
        self._kept[shard] = engine
        runs = [name for name in self._kept if name != INDEX_SHARD_NAME]
        for oldest in runs[: max(0, len(runs) - KEPT_RUN_FILES)]:
            self._kept.pop(oldest).dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[db.engine.Connection]:
        with self._db_lock:
            if shard not in self._initialized_dbs:
                # A file not seen yet, or seen before a wipe or an upgrade: whatever was kept
                # open on it may be a deleted file's.
                stale = self._kept.pop(shard, None)
                if stale is not None:
                    stale.dispose()
                # Created as Dagster creates it, on an engine of its own: its table creation
                # inspects the file through a second connection, which a pool of one would
                # wait for without end.
                first = self._engine(shard, poolclass=db.pool.NullPool)
                try:
                    self._initdb(first)
                finally:
                    first.dispose()
                self._initialized_dbs.add(shard)
            with self._kept_engine(shard).connect() as conn:
                changes = conn.connection.dbapi_connection.total_changes  # type: ignore[union-attr]
                with conn.begin():
                    yield conn
                wrote = conn.connection.dbapi_connection.total_changes != changes  # type: ignore[union-attr]
            if wrote and shard != INDEX_SHARD_NAME:
                # Dagster's watch of a run (the UI's live run logs) waits for the run's file to
                # change, which a commit on a kept connection does not do (it goes to the
                # write-ahead log; Dagster's own connection, closed after each batch, copied it
                # into the file): its time is touched instead, after each batch that wrote.
                with contextlib.suppress(OSError):
                    os.utime(self.path_for_shard(shard))

    def _close_kept(self) -> None:
        with self._db_lock:
            for engine in self._kept.values():
                engine.dispose()
            self._kept.clear()

    def wipe(self) -> None:
        # Dagster deletes the runs' files: none may stay open here.
        self._close_kept()
        super().wipe()

    def dispose(self) -> None:
        super().dispose()
        self._close_kept()
