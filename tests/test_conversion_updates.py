"""conversion_updates: the conversions again, each in the window of its latest change, so a
customer who applies the files in order (newest updated_at wins per id) has every conversion's
current state. Against the real S3 server and a real DuckDB file."""

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from affise_s3_assets.automation.reconciliation import CHANGED_ROWS, reconcile_group
from affise_s3_assets.config.apply import apply_integrations
from affise_s3_assets.config.schema import Reconciliation
from affise_s3_assets.config.targets import build_export_targets, build_window_groups
from affise_s3_assets.definitions import build_definitions
from affise_s3_assets.source.completeness import write_watermark
from affise_s3_assets.source.duckdb_file import connect_events_file
from affise_s3_assets.source.events import EventsDatabase
from tests.conftest import S3Server
from tests.delivered import delivered_rows, fetch, keys_in, range_tags, source_rows
from tests.window_rig import WindowRig

DAY = datetime(2026, 11, 25)
CHANGED_AT = datetime(2026, 11, 25, 22, 30)


def block(event_type: str, s3: S3Server, bucket: str, directory: str) -> str:
    return f"""    {event_type}:
      frequency: 60
      bucket: {bucket}
      region: us-west-2
      directory: {directory}
      access_key: ${{ACME_AWS_ACCESS_KEY_ID}}
      secret_key: ${{ACME_AWS_SECRET_ACCESS_KEY}}
      endpoint_url: {s3.endpoint_url}
"""


@pytest.fixture
def setup(
    rig: WindowRig, events_db: Path, tmp_path: Path
) -> tuple[dg.DagsterInstance, Path, dg.Definitions, Path]:
    """acme's conversions and conversion_updates, from a copy of the events file."""
    db = tmp_path / "events.duckdb"
    shutil.copy(events_db, db)
    rig.monkeypatch.setenv("AFFISE_EVENTS_DB", str(db))
    rig.path.write_text(
        'integrations:\n  - name: acme\n    start: "2026-11-24 00:00:00"\n'
        + block("conversions", rig.s3, rig.bucket, "conversions")
        + block("conversion_updates", rig.s3, rig.bucket, "updates")
    )
    return rig.instance, db, build_definitions(rig.path), rig.path


def run(defs: dg.Definitions, instance: dg.DagsterInstance, job: str, first: str, last: str):
    result = defs.resolve_job_def(job).execute_in_process(
        tags=range_tags(first, last), instance=instance
    )
    assert result.success
    return result


def rows_of(s3: S3Server, bucket: str, prefix: str) -> list[dict[str, str | None]]:
    """Every row of the files under `prefix`, file by file in key (window) order."""
    found = []
    for key in keys_in(s3, bucket):
        if key.startswith(prefix + "/"):
            header, rows = delivered_rows(fetch(s3, bucket, key))
            found.extend(dict(zip(header, row, strict=True)) for row in rows)
    return found


def test_applying_the_files_in_order_gives_every_conversions_current_state(
    setup: tuple[dg.DagsterInstance, Path, dg.Definitions, Path],
    s3_server: S3Server,
    bucket: str,
) -> None:
    instance, db, defs, config = setup
    run(defs, instance, "conversions_every_60min_job", "2026-11-25-00:00", "2026-11-25-23:00")
    run(
        defs, instance, "conversion_updates_every_60min_job", "2026-11-25-00:00", "2026-11-25-21:00"
    )

    # After delivery, the network confirms three conversions of the 10:00 window that were
    # pending, at 22:30: their status, payout and updated_at change in the source.
    with connect_events_file(db, read_only=False) as con:
        ids = [
            row[0]
            for row in con.execute(
                "SELECT id FROM conversions WHERE created_at >= '2026-11-25 10:00' AND "
                "created_at < '2026-11-25 11:00' AND status = 'pending' AND "
                "updated_at < '2026-11-25 22:00' ORDER BY id LIMIT 3"
            ).fetchall()
        ]
        assert len(ids) == 3
        before = {
            moment.strftime("%Y-%m-%d-%H:00")
            for (moment,) in con.execute(
                "SELECT updated_at FROM conversions WHERE list_contains($1, id)", [ids]
            ).fetchall()
        }
        con.execute(
            "UPDATE conversions SET status = 'confirmed', payouts = payouts + 1, "
            "updated_at = $1 WHERE list_contains($2, id)",
            [CHANGED_AT, ids],
        )
    run(
        defs, instance, "conversion_updates_every_60min_job", "2026-11-25-22:00", "2026-11-25-23:00"
    )

    # The 22:00 updates file holds them, as they are now, in updated_at order.
    _, expected = source_rows(
        db, "conversion_updates", CHANGED_AT.replace(minute=0), DAY + timedelta(hours=23)
    )
    _, delivered = delivered_rows(
        fetch(s3_server, bucket, "updates/2026/11/25/2026-11-25 22:00:00.csv.gz")
    )
    assert delivered == expected
    assert {row[0] for row in delivered} >= set(ids)

    # The customer's merge: the conversions files, then the updates files in order; per id,
    # the newest updated_at wins.
    state: dict[str, dict[str, str | None]] = {}
    for row in rows_of(s3_server, bucket, "conversions") + rows_of(s3_server, bucket, "updates"):
        known = state.get(row["id"])
        if known is None or (row["updated_at"] or "") >= (known["updated_at"] or ""):
            state[row["id"]] = row
    header, created = source_rows(db, "conversions", DAY, DAY + timedelta(days=1))
    current = {row[0]: dict(zip(header, row, strict=True)) for row in created}
    # Every conversion created that day and last changed before the updates delivered end is
    # exactly as the source holds it now, the three confirmed ones included.
    settled = {
        i: row for i, row in current.items() if (row["updated_at"] or "") < "2026-11-26 00:00:00"
    }
    assert len(settled) > 100
    assert {i: state[i] for i in settled} == settled
    assert all(state[i]["status"] == "confirmed" for i in ids)
    # The conversions file of 10:00 still shows them pending ...
    tens = [
        row
        for row in rows_of(s3_server, bucket, "conversions")
        if row["created_at"].startswith("2026-11-25 10:")
    ]
    assert {row["status"] for row in tens if row["id"] in ids} == {"pending"}

    # ... until reconciliation finds the window's rows changed and delivers it again.
    groups = {
        g.event_type: g
        for g in build_window_groups(
            build_export_targets(apply_integrations(config.read_text()).integrations)
        )
    }
    late = datetime(2026, 11, 26, 1, tzinfo=UTC)
    source = EventsDatabase(path=str(db))
    # The updates windows the three left hold fewer rows now: delivered again without them
    # (harmless to a customer who upserts; docs/customer-contract.md).
    moved, _, _, _ = reconcile_group(
        instance, source, groups["conversion_updates"], Reconciliation(), late
    )
    assert {(c.window, c.reason) for c in moved} == {(w, CHANGED_ROWS) for w in before}
    changed, requests, _, _ = reconcile_group(
        instance, source, groups["conversions"], Reconciliation(), late
    )
    assert [(c.window, c.reason) for c in changed] == [("2026-11-25-10:00", CHANGED_ROWS)]
    (request,) = requests
    result = defs.resolve_job_def(request.job_name).execute_in_process(
        partition_key=request.partition_key, tags=request.tags, instance=instance
    )
    assert result.success
    _, again = delivered_rows(
        fetch(s3_server, bucket, "conversions/2026/11/25/2026-11-25 10:00:00.csv.gz")
    )
    _, now = source_rows(db, "conversions", DAY + timedelta(hours=10), DAY + timedelta(hours=11))
    assert again == now


def test_updates_are_complete_no_further_than_the_conversions(
    events_db: Path, tmp_path: Path
) -> None:
    """Every conversion is a change at its creation: with the conversions' watermark at 12:00
    and no watermark of its own (a loader that keeps only the two first), the updates count
    as complete up to 12:00, not up to their latest updated_at (days later)."""
    db = tmp_path / "events.duckdb"
    shutil.copy(events_db, db)
    with connect_events_file(db, read_only=False) as con:
        con.execute("DELETE FROM affise_watermarks WHERE event_type = 'conversion_updates'")
        con.execute(
            "UPDATE affise_watermarks SET complete_until = '2026-11-25 12:00:00' "
            "WHERE event_type = 'conversions'"
        )
        ((latest,),) = con.execute("SELECT max(updated_at) FROM conversions").fetchall()
    assert latest > datetime(2026, 11, 26)
    progress = EventsDatabase(path=str(db)).progress("conversion_updates")
    assert progress.complete_until == datetime(2026, 11, 25, 12)
    assert "conversions' watermark" in progress.how
    # Its own watermark, behind the conversions', is the one that counts.
    with connect_events_file(db, read_only=False) as con:
        write_watermark(con, "conversion_updates", datetime(2026, 11, 25, 9))
    assert EventsDatabase(path=str(db)).progress("conversion_updates").complete_until == datetime(
        2026, 11, 25, 9
    )
