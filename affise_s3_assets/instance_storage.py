"""Dagster's event-log and run storages, keeping their connections between statements.

dagster-postgres opens a new connection for every statement batch it runs (SQLAlchemy's
NullPool): each event a run logs costs two or three Postgres connects (a backend process each),
and a window run logs two events per integration (the planned materialization at its creation,
the materialization as its object lands). These subclasses hold a small pool per process
instead: one connection kept open, a few more while threads need them, each checked before use
(a restarted Postgres costs a reconnect, never an error) and recycled hourly. Statements,
transactions and tables are Dagster's own, unchanged.

On SQLite (`dagster dev`), each event of an asset is also mirrored into the cross-run index
database, through a connection opened, committed and closed for it (the close checkpoints the
write-ahead log into the file). `KeptIndexSqliteEventLogStorage` keeps the index database's
connection open instead; each run's own database is still opened per event, so the webserver,
which watches that file, shows a run's events as they come.

The instance names them in its dagster.yaml (`deploy/dagster.yaml`, so every process of the
deployment: daemon, webserver, code server, run workers; `scripts/dagster.dev.yaml` for
`dagster dev`); the definitions never import this module. Like `dagster_internal.py` it
stands on Dagster's private storage modules, and `tests/test_instance_storage.py` fails when an
upgrade moves them. Knows nothing of deliveries.
"""

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as db
from dagster._core.storage.config import PostgresStorageConfig
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._serdes import ConfigurableClassData
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.utils import (
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)

# Kept open per process and storage; more are opened (and closed again) while threads need
# them at once. A deployment's connections: about two per process (runs, events).
KEPT_CONNECTIONS = 1
EXTRA_CONNECTIONS = 8
RECYCLE_SECONDS = 3600

_engines: "weakref.WeakSet[db.engine.Engine]" = weakref.WeakSet()


def _forget_connections_after_fork() -> None:
    # A forked child must not use its parent's sockets: it opens its own.
    for engine in list(_engines):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_connections_after_fork)


def pooled_engine(postgres_url: str, token_provider: Any = None) -> db.engine.Engine:
    """An engine keeping KEPT_CONNECTIONS open, in Dagster's autocommit mode."""
    engine = create_pg_engine(
        postgres_url,
        token_provider,
        isolation_level="AUTOCOMMIT",
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


class KeptConnectionsEventLogStorage(PostgresEventLogStorage):
    """`PostgresEventLogStorage`, its connections kept between events."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _keep_connections(self)

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: PostgresStorageConfig
    ) -> "KeptConnectionsEventLogStorage":
        return cls(**_arguments(inst_data, config_value))


class KeptConnectionsRunStorage(PostgresRunStorage):
    """`PostgresRunStorage`, its connections kept between statements."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _keep_connections(self)

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: PostgresStorageConfig
    ) -> "KeptConnectionsRunStorage":
        return cls(**_arguments(inst_data, config_value))


class KeptIndexSqliteEventLogStorage(SqliteEventLogStorage):
    """`SqliteEventLogStorage`, its cross-run index database's connection kept open.

    `base_dir` defaults to where Dagster's own SQLite storage keeps event logs
    ($DAGSTER_HOME/history/runs), so the instance's other storages stay Dagster's defaults."""

    def __init__(self, base_dir: str | None = None, inst_data: Any = None) -> None:
        if base_dir is None:
            base_dir = os.path.join(os.environ["DAGSTER_HOME"], "history", "runs")
        self._index_engine: db.engine.Engine | None = None
        super().__init__(base_dir, inst_data)

    @classmethod
    def config_type(cls) -> dict:
        return {"base_dir": db_config_field()}

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict
    ) -> "KeptIndexSqliteEventLogStorage":
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[db.engine.Connection]:
        if shard != INDEX_SHARD_NAME:
            with super()._connect(shard) as conn:
                yield conn
            return
        with self._db_lock:  # one connection in use at a time, as in Dagster's class
            if self._index_engine is None:
                self._index_engine = db.create_engine(
                    self.conn_string_for_shard(shard),
                    poolclass=db.pool.QueuePool,
                    pool_size=1,
                    max_overflow=0,
                    connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
                )
                _engines.add(self._index_engine)
            if shard not in self._initialized_dbs:
                self._initdb(self._index_engine)
                self._initialized_dbs.add(shard)
            with self._index_engine.connect() as conn, conn.begin():
                yield conn

    def dispose(self) -> None:
        if self._index_engine is not None:
            self._index_engine.dispose()
        super().dispose()


def db_config_field() -> Any:
    """An optional string (a path, or `env: NAME`)."""
    from dagster import Field, StringSource

    return Field(StringSource, is_required=False)
