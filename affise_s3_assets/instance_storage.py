"""Dagster's Postgres event-log and run storages, keeping their connections between statements.

dagster-postgres opens a new connection for every statement batch it runs (SQLAlchemy's
NullPool): each event a run logs costs two or three Postgres connects (a backend process each),
and a window run logs two events per integration (the planned materialization at its creation,
the materialization as its object lands). These subclasses hold a small pool per process
instead: one connection kept open, a few more while threads need them, each checked before use
(a restarted Postgres costs a reconnect, never an error) and recycled hourly. Statements,
transactions and tables are Dagster's own, unchanged.

The instance names them in its dagster.yaml (`deploy/dagster.yaml`: the daemon, the code
server and every run worker; the webserver swaps in a pool of its own, as Dagster does for
every storage it serves); the definitions never import this module. Like `dagster_internal.py` it
stands on Dagster's private storage modules, and `tests/test_instance_storage.py` fails when an
upgrade moves them. Knows nothing of deliveries.
"""

import os
import weakref
from typing import Any

import sqlalchemy as db
from dagster._core.storage.config import PostgresStorageConfig
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
EXTRA_CONNECTIONS = 20  # as many as Dagster's webserver allows itself
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


class KeptConnectionsEventLogStorage(_KeptConnections, PostgresEventLogStorage):
    """`PostgresEventLogStorage`, its connections kept between events."""


class KeptConnectionsRunStorage(_KeptConnections, PostgresRunStorage):
    """`PostgresRunStorage`, its connections kept between statements."""
