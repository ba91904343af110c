"""Late rows: delivered windows whose rows the source changed since are found by one query over
the look-back and delivered again, same key, saying why; the untouched ones are left alone.
Against the real S3 server and a real DuckDB file."""

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from affise_s3_assets.automation import reconciliation
from affise_s3_assets.automation.reconciliation import (
    CHANGED_ROWS,
    LATE_ROWS,
    RECONCILIATION_SENSOR,
    WHOLE_WINDOW,
    build_reconciliation_sensor,
    reconcile_group,
)
from affise_s3_assets.automation.runs import PARTITION_TAG, REASON_TAG, REDELIVERY_TAG
from affise_s3_assets.config.apply import apply_integrations
from affise_s3_assets.config.schema import Reconciliation
from affise_s3_assets.config.targets import build_export_targets, build_window_groups
from affise_s3_assets.definitions import build_definitions
from affise_s3_assets.source.duckdb_file import connect_events_file
from affise_s3_assets.source.events import EventsDatabase
from affise_s3_assets.source.fingerprint import Fingerprint
from affise_s3_assets.source.window_read import SourceRead
from tests.conftest import ROOT
from tests.delivered import ADVERTISER, delivered_rows, fetch, insert_late_rows, source_rows
from tests.json_schema import problems
from tests.window_rig import WindowRig

HOURS = ["2026-11-25-10:00", "2026-11-25-11:00", "2026-11-25-12:00"]
LATE_AT = datetime(2026, 11, 25, 11, 30)


def delivered(rig: WindowRig, events_db: Path, tmp_path: Path) -> Path:
    """A copy of the events file, and acme's HOURS delivered from it; the copy."""
    db = tmp_path / "events.duckdb"
    shutil.copy(events_db, db)
    rig.configure([("acme", "2026-11-24 00:00:00", rig.clicks("all"))])
    assert rig.run(events_db=db, last=HOURS[-1]).success
    return db


def head(rig: WindowRig, key: str) -> tuple[str, str]:
    """The object's ETag and version id: on a versioned bucket every upload makes a new
    version, so a re-upload shows even within the same second (LastModified has 1 s)."""
    found = rig.s3.client().head_object(Bucket=rig.bucket, Key=key)
    return found["ETag"], found["VersionId"]


def latest_metadata(rig: WindowRig, name: str, window: str) -> dict:
    records = rig.instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(["affise", name, "clicks"]), asset_partitions=[window]
        ),
        limit=1,
    ).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


# The windows' day, seen a few hours later: within a 72-hour look-back whatever today is.
NOW = datetime(2026, 11, 25, 16, tzinfo=UTC)


DEFAULTS = Reconciliation()


def evaluate_sensor(
    rig: WindowRig,
    settings: Reconciliation = DEFAULTS,
    cursor: str | None = None,
    at: datetime = NOW,
) -> dg.SensorResult:
    """A tick of the reconciliation sensor over the rig's config, the clock at `at`."""
    defs = build_definitions(rig.path)
    sensor = build_reconciliation_sensor(
        rig.groups(), [defs.resolve_job_def("clicks_every_60min_job")], settings, lambda: at
    )
    context = dg.build_sensor_context(instance=rig.instance, definitions=defs, cursor=cursor)
    return sensor.evaluate_tick(context)


def test_late_rows_are_delivered_again_under_the_same_key_and_nothing_else_is(
    rig: WindowRig, events_db: Path, tmp_path: Path
) -> None:
    db = tmp_path / "events.duckdb"
    shutil.copy(events_db, db)
    rig.s3.client().put_bucket_versioning(
        Bucket=rig.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    rig.configure(
        [
            ("everything", "2026-11-24 00:00:00", rig.clicks("all", "      manifest: true\n")),
            ("picky", "2026-11-24 00:00:00", rig.clicks("picky", "      affiliates: [101]\n")),
            (
                "other",
                "2026-11-24 00:00:00",
                rig.clicks("other", f'      advertisers: ["{ADVERTISER}"]\n'),
            ),
        ]
    )
    assert rig.run(events_db=db, last=HOURS[-1]).success
    data_keys = [k for k in rig.objects() if not k.endswith(".manifest.json")]
    assert len(data_keys) == 9
    before = {key: head(rig, key) for key in data_keys}
    first_rows = {
        name: latest_metadata(rig, name, HOURS[1])["rows"] for name in ("everything", "picky")
    }

    # Nothing changed yet: the sensor, over the real instance and source, asks for nothing.
    rig.monkeypatch.setenv("AFFISE_EVENTS_DB", str(db))
    assert evaluate_sensor(rig).run_requests == []

    # Three clicks of affiliate 101 (of another advertiser than `other` takes) arrive late.
    insert_late_rows(db, LATE_AT, affiliate=101)
    result = evaluate_sensor(rig)
    (request,) = result.run_requests
    assert request.partition_key == HOURS[1]
    assert request.tags[REASON_TAG] == LATE_ROWS and request.tags[REDELIVERY_TAG] == "1"
    assert sorted(k.to_user_string() for k in request.asset_selection) == [
        "affise/everything/clicks",
        "affise/picky/clicks",
    ]
    job = build_definitions(rig.path).resolve_job_def(request.job_name)
    run = job.execute_in_process(
        partition_key=request.partition_key,
        tags=request.tags,
        asset_selection=request.asset_selection,
        instance=rig.instance,
    )
    assert run.success

    # The changed window's objects hold the complete rows now, under the same keys.
    for name, directory, filters in (
        ("everything", "all", ((), ())),
        ("picky", "picky", ((101,), ())),
    ):
        key = f"{directory}/2026/11/25/2026-11-25 11:00:00.csv.gz"
        _, expected = source_rows(
            db,
            "clicks",
            LATE_AT.replace(minute=0),
            LATE_AT.replace(minute=0) + timedelta(hours=1),
            *filters,
        )
        _, rows = delivered_rows(fetch(rig.s3, rig.bucket, key))
        assert rows == expected
        assert len(rows) == first_rows[name] + 3
        shown = latest_metadata(rig, name, HOURS[1])
        assert shown["reason"] == LATE_ROWS
        assert (shown["rows_before"], shown["rows"]) == (first_rows[name], first_rows[name] + 3)
    # The others were not uploaded again.
    changed = {f"{d}/2026/11/25/2026-11-25 11:00:00.csv.gz" for d in ("all", "picky")}
    for key in data_keys:
        if key not in changed:
            assert head(rig, key) == before[key], key
        else:
            etag, version = head(rig, key)
            assert etag != before[key][0] and version != before[key][1], key
    # The manifest says why, and still describes its object.
    manifest = json.loads(
        fetch(
            rig.s3, rig.bucket, "all/2026/11/25/_manifests/2026-11-25 11:00:00.csv.gz.manifest.json"
        )
    )
    assert manifest["redelivery_reason"] == LATE_ROWS
    assert manifest["rows"] == first_rows["everything"] + 3
    assert (
        problems(manifest, json.loads((ROOT / "docs" / "manifest.schema.json").read_text())) == []
    )

    # Delivered as the source now is: the next pass finds nothing to do.
    assert evaluate_sensor(rig).run_requests == []


def test_a_window_whose_rows_all_vanished_is_not_replaced_by_an_empty_file(
    rig: WindowRig, events_db: Path, tmp_path: Path
) -> None:
    """A day folder unmounted or a loader's delete-then-reload leaves a delivered window with no
    rows while the watermark still says complete: an empty file over the delivered one would
    tell the customer there were no events. It is left alone, and the next pass looks again;
    a window that only lost some rows is delivered again as before."""
    rig.s3.client().put_bucket_versioning(
        Bucket=rig.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    db = delivered(rig, events_db, tmp_path)
    rig.monkeypatch.setenv("AFFISE_EVENTS_DB", str(db))
    emptied, thinned = HOURS[1], HOURS[2]
    with connect_events_file(db, read_only=False) as con:
        con.execute(
            "DELETE FROM clicks WHERE created_at >= $1 AND created_at < $2",
            [datetime(2026, 11, 25, 11), datetime(2026, 11, 25, 12)],
        )
        con.execute(
            "DELETE FROM clicks WHERE id IN (SELECT id FROM clicks WHERE created_at >= $1 "
            "AND created_at < $2 LIMIT 2)",
            [datetime(2026, 11, 25, 12), datetime(2026, 11, 25, 13)],
        )
    key = "all/2026/11/25/2026-11-25 11:00:00.csv.gz"
    kept = head(rig, key)
    for _ in range(2):
        (request,) = evaluate_sensor(rig).run_requests
        assert request.partition_key == thinned and request.tags[REASON_TAG] == CHANGED_ROWS
    assert head(rig, key) == kept
    assert latest_metadata(rig, "acme", emptied)["rows"] > 0
    _, rows = delivered_rows(fetch(rig.s3, rig.bucket, key))
    assert rows


def test_a_delivery_of_another_frequency_or_filter_is_not_taken_for_late_rows(
    rig: WindowRig, events_db: Path, tmp_path: Path
) -> None:
    """After a frequency or filter change, the windows delivered before it hold other rows
    than a re-delivery would: not a late row, and not re-delivered (docs/configuration.md's
    rule for a frequency change: nothing overlapping what the old one delivered is delivered
    again)."""
    db = delivered(rig, events_db, tmp_path)
    insert_late_rows(db, LATE_AT, affiliate=101)
    source = EventsDatabase(path=str(db))
    (group,) = rig.groups()
    changed, _, _, _ = reconcile_group(rig.instance, source, group, DEFAULTS, NOW)
    assert [c.window for c in changed] == [HOURS[1]]  # as configured: found
    for edit in (
        ("frequency: 60", "frequency: 15"),
        ("directory: all", "directory: all\n      affiliates: [101]"),
    ):
        rig.configure([("acme", "2026-11-24 00:00:00", rig.clicks("all").replace(*edit))])
        (group,) = rig.groups()
        changed, requests, _, _ = reconcile_group(rig.instance, source, group, DEFAULTS, NOW)
        assert (changed, requests) == ([], [])


def test_a_failed_fingerprint_never_fails_the_delivery_and_rows_still_tell(
    rig: WindowRig, events_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "events.duckdb"
    shutil.copy(events_db, db)
    rig.configure([("acme", "2026-11-24 00:00:00", rig.clicks("all"))])

    def broken(*args: object) -> dict:
        raise RuntimeError("Out of Memory Error: could not allocate block")

    with monkeypatch.context() as patched:
        patched.setattr(SourceRead, "fingerprints", broken)
        assert rig.run(events_db=db, last=HOURS[-1]).success
    shown = latest_metadata(rig, "acme", HOURS[1])
    assert "source_fingerprint" not in shown and shown["rows"] > 0
    rig.monkeypatch.setenv("AFFISE_EVENTS_DB", str(db))
    assert evaluate_sensor(rig).run_requests == []
    insert_late_rows(db, LATE_AT, affiliate=101)
    (request,) = evaluate_sensor(rig).run_requests
    assert request.partition_key == HOURS[1] and request.tags[REASON_TAG] == LATE_ROWS


def test_what_a_tick_has_no_room_for_is_found_again_by_the_next_pass(
    rig: WindowRig, events_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = delivered(rig, events_db, tmp_path)
    insert_late_rows(db, datetime(2026, 11, 25, 10, 30), affiliate=101)
    insert_late_rows(db, datetime(2026, 11, 25, 12, 30), affiliate=101)
    monkeypatch.setattr(reconciliation, "REDELIVERIES_IN_FLIGHT", 1)
    first = evaluate_sensor(rig)
    assert [r.partition_key for r in first.run_requests] == [HOURS[0]]
    (request,) = first.run_requests
    run = build_definitions(rig.path).resolve_job_def("clicks_every_60min_job")
    assert run.execute_in_process(
        partition_key=request.partition_key, tags=request.tags, instance=rig.instance
    ).success
    # The pass went on (no group waits behind one with more than a tick's room) ...
    waiting = evaluate_sensor(rig, cursor=first.cursor)
    assert waiting.run_requests == [] and waiting.skip_message.startswith("next pass at")
    # ... and the next pass finds what had no room, still unsettled.
    later = NOW + timedelta(minutes=DEFAULTS.every_minutes)
    second = evaluate_sensor(rig, cursor=waiting.cursor, at=later)
    assert [r.partition_key for r in second.run_requests] == [HOURS[2]]


def test_no_more_redeliveries_are_requested_than_may_be_in_flight(
    rig: WindowRig, events_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = delivered(rig, events_db, tmp_path)
    insert_late_rows(db, LATE_AT, affiliate=101)
    monkeypatch.setattr(reconciliation, "REDELIVERIES_IN_FLIGHT", 1)
    (request,) = evaluate_sensor(rig).run_requests
    # Created, not started yet (in flight): the cap is reached.
    job = build_definitions(rig.path).resolve_job_def("clicks_every_60min_job")
    rig.instance.create_run_for_job(
        job,
        run_config={},
        tags={**request.tags, PARTITION_TAG: request.partition_key},
        asset_selection=frozenset(request.asset_selection),
    )
    insert_late_rows(db, datetime(2026, 11, 25, 12, 30), affiliate=101)
    later = NOW + timedelta(minutes=DEFAULTS.every_minutes)
    assert evaluate_sensor(rig, at=later).run_requests == []


def test_a_pass_waits_every_minutes_and_a_tick_says_when_the_next_one_is(
    rig: WindowRig, events_db: Path
) -> None:
    rig.configure([("acme", "2026-11-24 00:00:00", rig.clicks("all"))])
    rig.monkeypatch.setenv("AFFISE_EVENTS_DB", str(events_db))
    first = evaluate_sensor(rig)
    assert first.run_requests == [] and "matches the source" in first.skip_message
    waiting = evaluate_sensor(rig, cursor=first.cursor)
    due = (NOW + timedelta(minutes=DEFAULTS.every_minutes)).isoformat()
    assert waiting.skip_message == f"next pass at {due}"


def test_a_parquet_source_fingerprints_as_the_duckdb_file_does(
    events_db: Path, tmp_path: Path
) -> None:
    """Values are hashed as the schema types them: a dataset storing nanosecond timestamps
    and BIGINT ids gives the same fingerprints as the DuckDB file."""
    root = tmp_path / "dataset"
    root.mkdir()
    with connect_events_file(events_db) as con:
        con.execute(
            "COPY (SELECT * REPLACE (created_at::TIMESTAMP_NS AS created_at, "
            "affiliate_id::BIGINT AS affiliate_id), strftime(created_at, '%Y-%m-%d') AS date "
            f"FROM clicks) TO '{root / 'clicks'}' (FORMAT parquet, PARTITION_BY (date))"
        )
    start, end = datetime(2026, 11, 25, 9), datetime(2026, 11, 25, 13)
    filters = [((), ()), ((101,), ())]
    prints = []
    for path in (events_db, root):
        with EventsDatabase(path=str(path)).read("clicks", start, end) as read:
            prints.append(read.fingerprints(60, filters))
    assert prints[0] == prints[1] and len(prints[0]) == 8


def test_one_query_over_the_look_back_tells_every_filter_and_window_apart(
    events_db: Path, tmp_path: Path
) -> None:
    """Fingerprints of a range equal each window's alone; a changed value or a removed row
    changes only the windows and filters that held it."""
    db = tmp_path / "events.duckdb"
    shutil.copy(events_db, db)
    source = EventsDatabase(path=str(db))
    start, end = datetime(2026, 11, 25, 9), datetime(2026, 11, 25, 13)
    filters = [((), ()), ((101,), ()), ((), (ADVERTISER,)), ((999_999,), ())]

    def prints(first: datetime = start, last: datetime = end) -> dict:
        with source.read("clicks", first, last) as read:
            return read.fingerprints(60, filters)

    whole = prints()
    for hour in range(9, 13):
        alone = prints(datetime(2026, 11, 25, hour), datetime(2026, 11, 25, hour + 1))
        assert alone == {k: v for k, v in whole.items() if k[1].hour == hour}
        window = datetime(2026, 11, 25, hour)
        _, rows = source_rows(db, "clicks", window, window + timedelta(hours=1))
        assert whole[(((), ()), window)].rows == len(rows) > 0
    assert not any(k[0] == ((999_999,), ()) for k in whole)  # no such affiliate: no rows

    with connect_events_file(db, read_only=False) as con:
        ((row_id, affiliate),) = con.execute(
            "SELECT id, affiliate_id FROM clicks WHERE created_at >= '2026-11-25 10:00' "
            "AND created_at < '2026-11-25 11:00' AND affiliate_id <> 101 ORDER BY id LIMIT 1"
        ).fetchall()
        con.execute("UPDATE clicks SET city = coalesce(city, '') || 'x' WHERE id = $1", [row_id])
    edited = prints()
    ten = datetime(2026, 11, 25, 10)
    assert edited[(((), ()), ten)].rows == whole[(((), ()), ten)].rows
    assert edited[(((), ()), ten)].differs_from(whole[(((), ()), ten)])
    assert edited[(((101,), ()), ten)] == whole[(((101,), ()), ten)]  # not its row
    assert {k: v for k, v in edited.items() if k[1] != ten} == {
        k: v for k, v in whole.items() if k[1] != ten
    }
    with connect_events_file(db, read_only=False) as con:
        con.execute("DELETE FROM clicks WHERE id = $1", [row_id])
    assert prints()[(((), ()), ten)].rows == whole[(((), ()), ten)].rows - 1
    assert affiliate != 101


def test_what_changed_is_found_and_named_without_a_source() -> None:
    """The comparison alone: more rows is late_rows, other rows changed_rows, a delivery
    recorded before fingerprints by its rows; consecutive windows share a run."""
    text = (ROOT / "integrations.yaml").read_text()
    groups = build_window_groups(build_export_targets(apply_integrations(text).integrations))
    group = next(g for g in groups if g.event_type == "clicks" and g.frequency == 15)
    (target, *_) = group.live
    scheme = "duckdb-test"
    delivered = {
        (target.asset_key, "2026-11-27-10:00"): Fingerprint(5, 1, scheme),
        (target.asset_key, "2026-11-27-10:15"): Fingerprint(5, 1, scheme),
        (target.asset_key, "2026-11-27-10:30"): Fingerprint(5, 1, scheme),
        (target.asset_key, "2026-11-27-10:45"): Fingerprint(4, 0, "rows only"),
    }
    at = datetime(2026, 11, 27, 10)
    current = {
        (target.filter_key, at): Fingerprint(6, 2, scheme),
        (target.filter_key, at + timedelta(minutes=15)): Fingerprint(5, 1, scheme),
        (target.filter_key, at + timedelta(minutes=30)): Fingerprint(5, 9, scheme),
        (target.filter_key, at + timedelta(minutes=45)): Fingerprint(4, 7, scheme),
    }
    from affise_s3_assets.automation.reconciliation import find_changed, redelivery_requests

    changed = find_changed(group, current, delivered, Fingerprint(0, 0, scheme))
    assert [(c.window, c.reason) for c in changed] == [
        ("2026-11-27-10:00", LATE_ROWS),
        ("2026-11-27-10:30", CHANGED_ROWS),
    ]
    # A window emptied at the source is a change, but not one delivered by itself...
    gone = find_changed(group, {}, delivered, Fingerprint(0, 0, scheme))
    assert len(gone) == 4 and all(c.vanished for c in gone)
    assert redelivery_requests(group, gone, set(), datetime(2026, 11, 28)) == []
    # ...unless only this export's rows left a window that still holds others'.
    others = {
        (WHOLE_WINDOW, at + timedelta(minutes=15 * i)): Fingerprint(9, 5, scheme) for i in range(4)
    }
    lost = find_changed(group, others, delivered, Fingerprint(0, 0, scheme))
    assert len(lost) == 4 and not any(c.vanished for c in lost)
    assert len(redelivery_requests(group, lost, set(), datetime(2026, 11, 28))) == 1
    # Rows removed, some left: delivered again.
    fewer = {
        (target.filter_key, at + timedelta(minutes=15 * i)): Fingerprint(1, 3, scheme)
        for i in range(4)
    }
    gone = find_changed(group, fewer, delivered, Fingerprint(0, 0, scheme))
    assert len(gone) == 4 and {c.reason for c in gone} == {CHANGED_ROWS}
    requests = redelivery_requests(group, gone, set(), datetime(2026, 11, 28))
    assert [
        (
            r.tags.get("dagster/asset_partition_range_start"),
            r.tags.get("dagster/asset_partition_range_end"),
        )
        for r in requests
    ] == [("2026-11-27-10:00", "2026-11-27-10:45")]
    busy = {(target.asset_key, "2026-11-27-10:15")}
    assert [
        r.partition_key or r.tags["dagster/asset_partition_range_start"]
        for r in redelivery_requests(group, gone, busy, datetime(2026, 11, 28))
    ] == [
        "2026-11-27-10:00",
        "2026-11-27-10:30",
    ]


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        (
            "reconciliation:\n  look_back_hours: 721\n",
            "reconciliation: look_back_hours: must be whole hours from 0 (never) to 720",
        ),
        (
            "reconciliation:\n  every_minutes: 1\n",
            "reconciliation: every_minutes: must be whole minutes from 5 to 1440",
        ),
        (
            "reconciliation:\n  days: 3\n",
            "reconciliation: days: is not a field (look_back_hours, every_minutes)",
        ),
        ("reconciliation: 3\n", "reconciliation: must be a mapping"),
    ],
)
def test_a_broken_reconciliation_block_keeps_the_last_good_one(block: str, problem: str) -> None:
    shipped = (ROOT / "integrations.yaml").read_text()
    good = apply_integrations("reconciliation:\n  look_back_hours: 24\n" + shipped)
    assert good.reconciliation.look_back_hours == 24 and not good.problems
    applied = apply_integrations(block + shipped, last_good=good)
    assert applied.reconciliation == good.reconciliation
    assert any(p.startswith(problem) for p in applied.problems), applied.problems
    assert applied.integrations == good.integrations


def test_no_look_back_means_no_reconciliation_sensor(tmp_path: Path) -> None:
    path = tmp_path / "integrations.yaml"
    path.write_text(
        "reconciliation:\n  look_back_hours: 0\n" + (ROOT / "integrations.yaml").read_text()
    )
    names = [s.name for s in build_definitions(path).get_repository_def().sensor_defs]
    assert RECONCILIATION_SENSOR not in names and "catch_up_sensor" in names


def test_settled_windows_are_not_read_again_until_their_rows_move(
    rig: WindowRig, events_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass reads Dagster's records only for each export's windows new to it, whose rows
    moved, or not yet settled: the steady state costs no read per delivered window, and an
    export whose destination is broken costs reads of its own windows only."""
    db = tmp_path / "events.duckdb"
    shutil.copy(events_db, db)
    rig.configure(
        [
            ("acme", "2026-11-24 00:00:00", rig.clicks("all")),
            ("broken", "2026-11-24 00:00:00", rig.clicks("x", bucket=rig.bucket + "-gone")),
        ]
    )
    assert not rig.run(events_db=db, last=HOURS[-1]).success  # acme's delivered, broken's not
    source = EventsDatabase(path=str(db))
    (group,) = rig.groups()
    asked: list[tuple[str, frozenset[str]]] = []
    fetch_materializations = rig.instance.fetch_materializations

    def counting(records_filter: dg.AssetRecordsFilter, **kwargs: object) -> object:
        keys = frozenset(records_filter.asset_partitions or [])
        asked.append((records_filter.asset_key.path[1], keys))
        return fetch_materializations(records_filter, **kwargs)

    def read(name: str) -> set[str]:
        return {k for who, keys in asked if who == name for k in keys} & set(HOURS)

    monkeypatch.setattr(rig.instance, "fetch_materializations", counting)
    changed, _, settled, whole = reconcile_group(rig.instance, source, group, DEFAULTS, NOW)
    assert changed == [] and whole
    assert (
        set(HOURS) <= set(settled["affise/acme/clicks"]) and "affise/broken/clicks" not in settled
    )
    assert read("acme") == read("broken") == set(HOURS)
    # Settled: acme's windows are not read again; broken's, never delivered, are.
    asked.clear()
    args = (rig.instance, source, group, DEFAULTS, NOW, None)
    changed, _, again, _ = reconcile_group(*args, settled)
    assert changed == [] and again == settled
    assert read("acme") == set() and read("broken") == set(HOURS)
    # Late rows move one window's fingerprint: acme's window alone is read, and found.
    insert_late_rows(db, LATE_AT, affiliate=101)
    asked.clear()
    changed, _, after, _ = reconcile_group(*args, settled)
    assert [(c.target.integration, c.window) for c in changed] == [("acme", HOURS[1])]
    assert read("acme") == {HOURS[1]}
    # Not settled until it is delivered as the source now is.
    assert HOURS[1] not in after["affise/acme/clicks"] and HOURS[0] in after["affise/acme/clicks"]
    # Out of time from the start: one export is read all the same (a group whose scan alone
    # outlasts the budget still moves on), the rest wait; not whole.
    asked.clear()
    changed, _, cut, whole = reconcile_group(*args, {}, deadline=0.0)
    assert not whole and {who for who, _ in asked} == {"acme"}
    assert [(c.target.integration, c.window) for c in changed] == [("acme", HOURS[1])]
    assert list(cut) == ["affise/acme/clicks"] and HOURS[1] not in cut["affise/acme/clicks"]


def test_reconcile_group_finds_nothing_to_redeliver_or_settle_where_nothing_was_delivered(
    events_db: Path,
) -> None:
    text = (ROOT / "integrations.yaml").read_text()
    groups = build_window_groups(build_export_targets(apply_integrations(text).integrations))
    with dg.instance_for_test() as instance:
        changed, requests, settled, _ = reconcile_group(
            instance,
            EventsDatabase(path=str(events_db)),
            groups[0],
            Reconciliation(),
            datetime(2026, 11, 26),
        )
    assert changed == [] and requests == []
    assert settled == {}  # nothing delivered is nothing known equal to the source
