"""The one place that reaches into Dagster's private modules, for what 1.13 has no public API.

Every `dagster._...` import of the package is here (a test refuses one anywhere else), and so
is every call of a `DagsterInstance` method that Dagster does not mark public: the key-value
store, the instigator states, a run's tags added, an asset's materialized partitions. The
other instance calls are public ones (`get_run_records`, `fetch_materializations`,
`fetch_run_status_changes`, `get_run_by_id`). Each function names the internal it
stands on; `tests/test_dagster_internal.py` fails loudly when an upgrade of the pinned Dagster
moves or changes one of them. Knows nothing of this project's config, S3 or DuckDB.

The storage classes instance_storage.py extends are named here too and imported on first use
(`__getattr__`), so a process that never builds such a storage never loads them.
"""

import importlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import dagster as dg
from dagster._core.definitions.definitions_load_context import (
    DefinitionsLoadContext,
    DefinitionsLoadType,
)
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)
from dagster._core.scheduler.instigation import InstigatorStatus

# What `dg.define_asset_job` returns: Dagster 1.13 exports no name for the type.
AssetJob = UnresolvedAssetJobDefinition

# instance_storage.py's bases, what they are configured with and what they write: name ->
# (module, attribute).
_SQLITE_EVENT_LOG = "dagster._core.storage.event_log.sqlite.sqlite_event_log"
_EVENT_LOG_SCHEMA = "dagster._core.storage.event_log.schema"
_ON_FIRST_USE = {
    "SqliteEventLogStorage": (_SQLITE_EVENT_LOG, "SqliteEventLogStorage"),
    "INDEX_SHARD_NAME": (_SQLITE_EVENT_LOG, "INDEX_SHARD_NAME"),
    "SQLITE_BUSY_TIMEOUT_SECONDS": (_SQLITE_EVENT_LOG, "SQLITE_BUSY_TIMEOUT_SECONDS"),
    "PostgresStorageConfig": ("dagster._core.storage.config", "PostgresStorageConfig"),
    "ConfigurableClassData": ("dagster._serdes", "ConfigurableClassData"),
    "ASSET_EVENTS": ("dagster._core.events", "ASSET_EVENTS"),
    "ASSET_CHECK_EVENTS": ("dagster._core.events", "ASSET_CHECK_EVENTS"),
    "SqlEventLogStorageTable": (_EVENT_LOG_SCHEMA, "SqlEventLogStorageTable"),
}

if TYPE_CHECKING:
    from dagster._core.events import ASSET_CHECK_EVENTS as ASSET_CHECK_EVENTS
    from dagster._core.events import ASSET_EVENTS as ASSET_EVENTS
    from dagster._core.storage.config import PostgresStorageConfig as PostgresStorageConfig
    from dagster._core.storage.event_log.schema import (
        SqlEventLogStorageTable as SqlEventLogStorageTable,
    )
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
        INDEX_SHARD_NAME as INDEX_SHARD_NAME,
    )
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
        SQLITE_BUSY_TIMEOUT_SECONDS as SQLITE_BUSY_TIMEOUT_SECONDS,
    )
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
        SqliteEventLogStorage as SqliteEventLogStorage,
    )
    from dagster._serdes import ConfigurableClassData as ConfigurableClassData


def __getattr__(name: str) -> Any:
    if name in _ON_FIRST_USE:
        module, attribute = _ON_FIRST_USE[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _context() -> DefinitionsLoadContext | None:
    return DefinitionsLoadContext.get() if DefinitionsLoadContext.is_set() else None


def reconstruction_value(key: str) -> str | None:
    """The value a run's process was launched with under `key`, when this load rebuilds the
    definitions of a run (a run worker, a step process); None on a code server's own load."""
    context = _context()
    if context is None or context.load_type != DefinitionsLoadType.RECONSTRUCTION:
        return None
    return context.reconstruction_metadata.get(key)


def pin_for_runs(key: str, value: str) -> None:
    """Hand `value` to every run launched from this load: Dagster stores it with the run's
    execution plan, and `reconstruction_value(key)` returns it in the run's processes.

    `Definitions.with_reconstruction_metadata` (the public preview API) only adds the value
    to the definitions' metadata, which no run ever receives: the pending reconstruction
    metadata of the load context is what `RepositoryLoadData` is built from."""
    context = _context()
    if context is not None and context.load_type == DefinitionsLoadType.INITIALIZATION:
        context.add_to_pending_reconstruction_metadata(key, value)


def loading_location_name() -> str | None:
    """The name the loading code server gives the code location, if it gives one."""
    context = _context()
    return context.code_location_name if context is not None else None


def partition_range_tags(first: str, last: str) -> dict[str, str]:
    """The tags that make a run of a partitioned asset job deliver partitions `first` through
    `last` (keys, inclusive): what Dagster's backfills and `RunRequest`s of a range set. Dagster
    1.13 reads them from the run and has no public way to ask for a range when executing a
    job (`execute_job` takes tags; `dagster asset materialize --partition-range` refuses a
    multi-run backfill policy)."""
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    return {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}


def sql_run_storage(instance: dg.DagsterInstance) -> Any | None:
    """The SQL run storage behind an instance's run storage (SQLite, Postgres, MySQL), or None
    for a storage of another kind. Dagster 1.13 has no public compare-and-set on its key-value
    store; its table is what one needs."""
    run_storage = instance.run_storage
    # Imported here: a process that never journals an upload loads no SQL storage for it.
    from dagster._core.storage.runs.sql_run_storage import SqlRunStorage

    inner = getattr(run_storage, "_storage", None)  # a LegacyRunStorage wraps the real one
    if inner is not None and hasattr(inner, "run_storage"):
        run_storage = inner.run_storage
    return run_storage if isinstance(run_storage, SqlRunStorage) else None


def compare_and_set_key_value(storage: Any, key: str, old: str | None, new: str) -> bool:
    """Store `new` under `key` of the key-value store if it still holds `old` (None: no row
    yet). One statement: the row's lock (Postgres, MySQL) or the database's (SQLite) makes it
    atomic."""
    import sqlalchemy
    import sqlalchemy.exc
    from dagster._core.storage.runs.schema import KeyValueStoreTable

    if old is None:
        try:
            with storage.connect() as conn:
                conn.execute(KeyValueStoreTable.insert().values(key=key, value=new))
        except sqlalchemy.exc.IntegrityError:
            return False  # another writer created it first
        return True
    table = KeyValueStoreTable
    with storage.connect() as conn:
        result = conn.execute(
            table.update()
            .where(sqlalchemy.and_(table.c.key == key, table.c.value == old))
            .values(value=new)
        )
        return result.rowcount == 1


def stored_values(instance: dg.DagsterInstance, keys: Iterable[str]) -> dict[str, str]:
    """The values the instance's key-value store holds under `keys` (absent keys left out).
    Dagster 1.13 keeps it in the run storage and gives it no public API; sensors' cursors are
    per sensor, and the state kept here is shared (the catch-up state, upload journal, reload
    asks, reconciliation's settled windows)."""
    return instance.run_storage.get_cursor_values(set(keys))


def store_values(instance: dg.DagsterInstance, values: Mapping[str, str]) -> None:
    """Write `values` to the instance's key-value store (see `stored_values`)."""
    instance.run_storage.set_cursor_values(dict(values))


def stopped_schedules(instance: dg.DagsterInstance) -> set[str]:
    """Names of the schedules an operator stopped (a stored STOPPED state). Dagster 1.13's
    public API reads a schedule's state by its origin only, one at a time."""
    states = instance.all_instigator_state(
        instigator_type=InstigatorType.SCHEDULE, instigator_statuses={InstigatorStatus.STOPPED}
    )
    return {state.instigator_name for state in states}


def add_run_tags(instance: dg.DagsterInstance, run_id: str, tags: Mapping[str, str]) -> None:
    """Add `tags` to a run while it runs (what the UI's tag editor does)."""
    instance.add_run_tags(run_id, dict(tags))


def materialized_partitions(instance: dg.DagsterInstance, key: dg.AssetKey) -> set[str]:
    """The partitions of `key` materialized at least once (the UI's green and the catch-up's
    "delivered"). The public `get_status_by_partition` needs the partitions definition and
    reads more."""
    return set(instance.get_materialized_partitions(key))


def newest_event_id(instance: dg.DagsterInstance) -> int:
    """The event log's newest storage id, 0 when it is empty
    (`EventLogStorage.get_maximum_record_id`)."""
    return instance.event_log_storage.get_maximum_record_id() or 0


def observed_between(
    instance: dg.DagsterInstance, after: int, until: int, limit: int
) -> set[dg.AssetKey] | None:
    """The assets with an observation stored after `after` and up to `until` (storage ids), in
    one query over every asset; None when there are more than `limit` such observations.
    `EventLogStorage.get_event_records`: the instance's own is deprecated, and its public
    `fetch_observations` reads one asset at a time."""
    records = instance.event_log_storage.get_event_records(
        dg.EventRecordsFilter(
            event_type=dg.DagsterEventType.ASSET_OBSERVATION,
            after_cursor=after,
            before_cursor=until + 1,
        ),
        limit=limit + 1,
        ascending=True,
    )
    if len(records) > limit:
        return None
    return {record.asset_key for record in records if record.asset_key is not None}


def newest_materialized_partitions(
    instance: dg.DagsterInstance, keys: list[dg.AssetKey], chunk: int = 1000
) -> dict[dg.AssetKey, str | None]:
    """Each asset's newest materialization's partition (None: none, or unpartitioned), a query
    per `chunk` assets (`get_asset_records`, not public) instead of one per asset."""
    newest: dict[dg.AssetKey, str | None] = {}
    for first in range(0, len(keys), chunk):
        for record in instance.get_asset_records(keys[first : first + chunk]):
            last = record.asset_entry.last_materialization_record
            newest[record.asset_entry.asset_key] = last.partition_key if last else None
    return newest
