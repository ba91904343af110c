"""Window runs against the real S3 server: one read of the window (or range), one object per
integration and window, one materialization per partition, failures isolated and Failed."""

import hashlib
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.exceptions
import dagster as dg
import duckdb
import pytest

from affise_s3_assets.automation.catch_up import ended_runs_since
from affise_s3_assets.config.targets import build_export_targets
from affise_s3_assets.delivery.engine import Window, deliver_windows
from affise_s3_assets.s3 import CLEAN_UP_TIMED_OUT, DeliveryTimeout
from affise_s3_assets.source import duckdb_file as source
from affise_s3_assets.source.completeness import write_watermark
from affise_s3_assets.source.duckdb_file import connect_events_file
from affise_s3_assets.source.events import EventsDatabase
from tests.conftest import ROOT, S3Server
from tests.delivered import (
    ADVERTISER,
    deliver,
    delivered_rows,
    deny_intruders_puts,
    export_asset,
    fetch,
    integration,
    readme_manifest_check,
    source_rows,
)
from tests.etag_rewriting_proxy import etag_rewriting_proxy
from tests.json_schema import problems
from tests.operations import wait_for
from tests.stalling_endpoint import stalling_endpoint
from tests.window_rig import WindowRig

WINDOW = "2026-11-25-10:00"
START, END = datetime(2026, 11, 25, 10), datetime(2026, 11, 25, 11)
KEY_TAIL = "2026/11/25/2026-11-25 10:00:00.csv.gz"


def observations(rig: WindowRig, name: str) -> list[dg.AssetObservation]:
    records = rig.instance.fetch_observations(dg.AssetKey(["affise", name, "clicks"]), limit=10)
    return [record.asset_observation for record in records.records]


def materializations(rig: WindowRig, name: str) -> list[dg.AssetMaterialization]:
    records = rig.instance.fetch_materializations(dg.AssetKey(["affise", name, "clicks"]), limit=10)
    return [record.asset_materialization for record in records.records]


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    return result.get_step_failure_events()[0].step_failure_data.error.message


def test_one_run_delivers_every_integration_with_its_own_filters(rig: WindowRig) -> None:
    both = f'      affiliates: [101, 102]\n      advertisers: ["{ADVERTISER}"]\n'
    rig.configure(
        [
            ("everything", "2026-11-24 00:00:00", rig.clicks("all")),
            ("picky", "2026-11-24 00:00:00", rig.clicks("picky", both)),
            ("twin", "2026-11-24 00:00:00", rig.clicks("twin", both)),
            ("later", "2026-11-25 12:00:00", rig.clicks("later")),
        ]
    )
    assert rig.run().success
    for name in ("everything", "picky", "twin"):
        assert rig.materialized(name) == {WINDOW}
    assert rig.materialized("later") == set()  # its start is after this window
    event = rig.instance.get_latest_materialization_event(
        dg.AssetKey(["affise", "picky", "clicks"])
    )
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert rig.objects() == [f"{d}/{KEY_TAIL}" for d in ("all", "picky", "twin")]
    _, everything = source_rows(rig.events_db, "clicks", START, END)
    _, picky = source_rows(rig.events_db, "clicks", START, END, (101, 102), (ADVERTISER,))
    assert 0 < len(picky) < len(everything)
    for directory, expected in (("all", everything), ("picky", picky), ("twin", picky)):
        _, rows = delivered_rows(fetch(rig.s3, rig.bucket, f"{directory}/{KEY_TAIL}"))
        assert rows == expected
    assert metadata["rows"] == len(picky)
    assert metadata["s3_uri"] == f"s3://{rig.bucket}/picky/{KEY_TAIL}"
    assert metadata["window_start"] == "2026-11-25 10:00:00"
    assert metadata["affiliates"] == "101, 102"


def test_a_single_asset_run_and_a_group_run_deliver_identical_bytes(rig: WindowRig) -> None:
    extra = "      affiliates: [101, 103]\n"
    rig.configure(
        [
            ("acme", "2026-11-24 00:00:00", rig.clicks("fan", extra)),
            ("other", "2026-11-24 00:00:00", rig.clicks("other")),
        ]
    )
    assert rig.run().success
    asset = export_asset(integration(rig.s3, rig.bucket, directory="single", extra=extra))
    deliver(asset, WINDOW, rig.events_db)
    fanned = fetch(rig.s3, rig.bucket, f"fan/{KEY_TAIL}")
    assert fanned == fetch(rig.s3, rig.bucket, f"single/{KEY_TAIL}")


def test_a_failing_integration_fails_alone_shows_failed_and_is_redelivered_alone(
    rig: WindowRig,
) -> None:
    missing = rig.good_and_broken(rig.bucket + "-not-yet")
    result = rig.run()
    assert not result.success
    assert len(result.get_step_failure_events()) == 1
    message = failure_message(result)
    assert "1 objects failed, 1 delivered, over 1 windows" in message
    assert f"integration 'broken' (clicks) to bucket '{missing}'" in message
    assert f"broken/{KEY_TAIL}" in message
    assert "NoSuchBucket" in message
    assert rig.s3.customer.secret_key not in message
    assert rig.materialized("good") == {WINDOW}
    assert rig.materialized("broken") == set()
    # Dagster's own partition status, as the UI shows it: red for the failed one only.
    assert rig.status("broken", [WINDOW]) == ["FAILED"]
    assert rig.status("good", [WINDOW]) == ["MATERIALIZED"]
    assert rig.objects() == [f"good/{KEY_TAIL}"]
    # The broken asset's own page says why; the good one's says nothing.
    (observed,) = observations(rig, "broken")
    assert observed.partition == WINDOW
    reason = observed.metadata["delivery_failed"].value
    assert "NoSuchBucket" in reason and f"broken/{KEY_TAIL}" in reason
    assert observed.metadata["error_code"].value == "NoSuchBucket"
    assert rig.s3.customer.secret_key not in reason
    assert observations(rig, "good") == []

    # The catch-up sensor finds the failed run and what it planned.
    (group,) = rig.groups()
    jobs = {group.job_name: [t.asset_key for t in group.live]}
    ended, after = ended_runs_since(rig.instance, None, jobs)
    assert ended == [] and after["RUN_FAILURE"] > 0  # first look: starts from now
    ended, _ = ended_runs_since(rig.instance, {"RUN_FAILURE": 0, "RUN_CANCELED": 0}, jobs)
    (run,) = ended
    assert (run.first, run.last) == (WINDOW, WINDOW)
    assert run.asset_keys == {
        dg.AssetKey(["affise", name, "clicks"]) for name in ("good", "broken")
    }

    # The destination is fixed; re-delivering only the failed integration turns it green.
    rig.s3.client().create_bucket(Bucket=missing)
    assert rig.run(only=["broken"]).success
    assert rig.materialized("broken") == {WINDOW}
    assert rig.status("broken", [WINDOW]) == ["MATERIALIZED"]
    good = rig.instance.fetch_materializations(dg.AssetKey(["affise", "good", "clicks"]), limit=10)
    assert len(good.records) == 1
    assert rig.objects(missing) == [f"broken/{KEY_TAIL}"]


def test_a_range_run_delivers_each_window_to_each_integration_from_one_read(
    rig: WindowRig,
) -> None:
    both = f'      affiliates: [101, 102]\n      advertisers: ["{ADVERTISER}"]\n'
    rig.configure(
        [
            ("everything", "2026-11-24 00:00:00", rig.clicks("all")),
            ("picky", "2026-11-24 00:00:00", rig.clicks("picky", both)),
        ]
    )
    hours = [10, 11, 12, 13]
    assert rig.run(last="2026-11-25-13:00").success
    windows = {f"2026-11-25-{hour}:00" for hour in hours}
    for name, directory, filters in (
        ("everything", "all", ((), ())),
        ("picky", "picky", ((101, 102), (ADVERTISER,))),
    ):
        assert rig.materialized(name) == windows
        expected_keys = [f"{directory}/2026/11/25/2026-11-25 {h}:00:00.csv.gz" for h in hours]
        assert [k for k in rig.objects() if k.startswith(directory + "/")] == expected_keys
        for hour, key in zip(hours, expected_keys, strict=True):
            start = datetime(2026, 11, 25, hour)
            _, expected = source_rows(
                rig.events_db, "clicks", start, start.replace(hour=hour + 1), *filters
            )
            _, rows = delivered_rows(fetch(rig.s3, rig.bucket, key))
            assert rows == expected and rows


def test_a_permanent_error_stops_that_destination_for_the_rest_of_its_run(
    rig: WindowRig,
) -> None:
    rig.good_and_broken(rig.bucket + "-gone")
    windows = [f"2026-11-25-{hour}:00" for hour in (10, 11, 12)]
    result = rig.run(last=windows[-1])
    assert not result.success
    message = failure_message(result)
    assert "1 objects failed, 3 delivered, over 3 windows" in message
    assert "its later windows in this run were not attempted" in message
    assert rig.status("broken", windows) == ["FAILED"] * 3
    assert rig.status("good", windows) == ["MATERIALIZED"] * 3
    # Every window the run planned and did not deliver says why on the asset's page: the
    # failed one, and the two never tried in the words of the failure that stopped the
    # destination, its S3 code included.
    seen = {o.partition: o.metadata for o in observations(rig, "broken")}
    assert sorted(seen) == windows
    assert seen[windows[0]]["delivery_failed"].value.startswith("Delivery failed")
    assert all(
        seen[w]["delivery_failed"].value.startswith(
            f"not attempted in this run, stopped by window {windows[0]}'s failure"
        )
        and "NoSuchBucket" in seen[w]["delivery_failed"].value
        and seen[w]["error_code"].value == "NoSuchBucket"
        for w in windows[1:]
    )
    # The delivered ones say how they were verified.
    assert sorted(m.partition for m in materializations(rig, "good")) == windows
    assert all(m.metadata["verified_by"].value == "etag" for m in materializations(rig, "good"))


def test_unreadable_source_fails_the_window_and_delivers_nothing(rig: WindowRig) -> None:
    rig.configure([("acme", "2026-11-24 00:00:00", rig.clicks("x"))])
    result = rig.run(events_db=rig.tmp_path / "absent.duckdb")
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert "absent.duckdb does not exist" in error.message
    assert rig.materialized("acme") == set()
    assert rig.status("acme", [WINDOW]) == ["FAILED"]
    assert rig.objects() == []


def test_selecting_an_integration_before_its_start_delivers_nothing_for_it(
    rig: WindowRig,
) -> None:
    rig.configure(
        [
            ("acme", "2026-11-24 00:00:00", rig.clicks("a")),
            ("late", "2026-11-25 12:00:00", rig.clicks("l")),
        ]
    )
    result = rig.run(only=["late", "acme"])
    assert result.success
    assert rig.materialized("late") == set()
    assert rig.objects() == [f"a/{KEY_TAIL}"]


class _FailingObject:
    def __init__(self, key: str) -> None:
        self.key = key
        self.verification = None  # never completed

    def write(self, chunk: bytes) -> None:
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://dead")

    def finish(self, last_chunk: bytes, clean_up: bool = False) -> dict[str, Any]:
        self.write(last_chunk)
        return {}

    def abort(self) -> None:
        pass


class _TimingOutObject(_FailingObject):
    def write(self, chunk: bytes) -> None:
        raise DeliveryTimeout("no answer within 120 s")


class _SilentObject(_FailingObject):
    """A silent endpoint: botocore's read timeouts on every attempt end it before our
    deadline does."""

    def write(self, chunk: bytes) -> None:
        raise botocore.exceptions.ReadTimeoutError(endpoint_url="http://silent")


class _Unreachable:
    """An S3 writer whose every object fails as an unreachable endpoint would (or, with
    `failure`, as another failing object does)."""

    def __init__(self, failure: type[_FailingObject] = _FailingObject) -> None:
        self.opened: list[str] = []
        self.failure = failure

    def open_object(self, destination: Any, window_start: datetime, *_: Any) -> _FailingObject:
        self.opened.append(f"{window_start:%H:%M}")
        return self.failure(f"k/{window_start:%H:%M}")


def _deliver_hours(
    events_db: Path, hours: tuple[int, ...], s3_writer: Any, on_window: Any, clean_up: bool = False
) -> list[Window]:
    """The hourly windows `hours` of 2026-11-25, one ranged delivery through `s3_writer` of one
    integration whose destination `s3_writer` stands for; the windows."""
    (target,) = build_export_targets(
        [integration(S3Server("http://io", *[None] * 3), "io-bucket")]  # type: ignore[arg-type]
    )
    windows = [
        Window(f"2026-11-25-{h}:00", datetime(2026, 11, 25, h), datetime(2026, 11, 25, h + 1))
        for h in hours
    ]
    deliver_windows(
        [target],
        windows,
        EventsDatabase(path=str(events_db)).window_frames("clicks", START, windows[-1].end),
        s3_writer,
        on_window,
        clean_up=clean_up,
    )
    return windows


@pytest.mark.parametrize(
    ("failure", "opened", "stopped_at"),
    [
        (_FailingObject, ["10:00", "11:00"], "11:00"),
        (_TimingOutObject, ["10:00"], "10:00"),
        (_SilentObject, ["10:00"], "10:00"),
    ],
    ids=["unreachable", "ran out a deadline", "silent"],
)
def test_a_failing_destination_is_not_tried_for_the_rest_of_the_run(
    events_db: Path, failure: type[_FailingObject], opened: list[str], stopped_at: str
) -> None:
    """An unreachable endpoint costs each object botocore's retries and timeouts: after two
    windows in a row it is not tried again in that run, so it cannot hold up a day's range.
    One whose request ran out its deadline is stopped after that one window: each window
    waits for every object of the one before, so the others wait for it once, not twice."""
    reported: list[tuple[str, str, bool]] = []
    writer = _Unreachable(failure)
    _deliver_hours(
        events_db,
        (10, 11, 12, 13),
        writer,
        lambda window, objects: reported.extend(
            (window.key, item.code, item.stops_destination) for item in objects if item.failure
        ),
    )
    assert writer.opened == opened
    code = {
        _FailingObject: "EndpointConnectionError",
        _TimingOutObject: "DeliveryTimeout",
        _SilentObject: "ReadTimeoutError",
    }[failure]
    assert reported == [(f"2026-11-25-{hour}", code, hour == stopped_at) for hour in opened]


class _SlowListing:
    """An S3 writer whose objects land, but whose clean-up of leftover uploads runs out its
    deadline (a store that lists slowly); it records which objects were asked to clean up."""

    def __init__(self) -> None:
        self.cleaned: list[bool] = []

    def open_object(self, destination: Any, window_start: datetime, *_: Any) -> Any:
        writer = self

        class Landing(_FailingObject):
            def write(self, chunk: bytes) -> None:
                pass

            def finish(self, last_chunk: bytes, clean_up: bool = False) -> dict[str, Any]:
                writer.cleaned.append(clean_up)
                return {"leftover_uploads_aborted": CLEAN_UP_TIMED_OUT[0]} if clean_up else {}

        return Landing(f"k/{window_start:%H:%M}")


def test_a_clean_up_that_ran_out_its_deadline_is_not_tried_again_in_the_run(
    events_db: Path,
) -> None:
    """Every window of a ranged re-delivery cleans up its key: a store that lists slowly
    would cost each window a deadline, and hold up every integration of the range."""
    writer = _SlowListing()
    delivered: list[str] = []
    windows = _deliver_hours(
        events_db,
        (10, 11, 12),
        writer,
        lambda window, objects: delivered.extend(
            window.key for item in objects if item.failure is None
        ),
        clean_up=True,
    )
    assert delivered == [window.key for window in windows]
    assert writer.cleaned == [True, False, False]


def _copy_with_watermark(source: Path, target: Path, until: datetime | None) -> Path:
    """The events file as a loader would leave it: its rows, and how far they are complete."""
    shutil.copy(source, target)
    with duckdb.connect(str(target)) as con:
        con.execute("DELETE FROM affise_watermarks")
        if until is not None:
            write_watermark(con, "clicks", until)
    return target


def test_a_window_the_source_is_not_complete_for_is_failed_and_delivered_once_it_is(
    rig: WindowRig,
) -> None:
    """Ingestion stalled at 10:40: the 10:00-11:00 window is not delivered as a short file but
    Failed, naming how far the source is complete; once the watermark passes 11:00 the same
    run delivers it, every row."""
    rig.configure([("acme", "2026-11-24 00:00:00", rig.clicks("x"))])
    stalled = _copy_with_watermark(
        rig.events_db, rig.tmp_path / "stalled.duckdb", datetime(2026, 11, 25, 10, 40)
    )
    result = rig.run(events_db=stalled)
    assert not result.success
    assert rig.objects() == []
    assert rig.status("acme", [WINDOW]) == ["FAILED"]
    (seen,) = observations(rig, "acme")
    assert seen.metadata["error_code"].value == "SourceIncomplete"
    assert (
        "the source is complete for clicks up to 2026-11-25 10:40:00 (watermark); this window "
        "ends at 2026-11-25 11:00:00"
    ) in seen.metadata["delivery_failed"].value
    # The catch-up sensor sees it was the source, not the destination: no back-off for it.
    (group,) = rig.groups()
    jobs = {group.job_name: [t.asset_key for t in group.live]}
    (failed,) = ended_runs_since(rig.instance, {"RUN_FAILURE": 0, "RUN_CANCELED": 0}, jobs)[0]
    assert failed.waits_for_source
    caught_up = _copy_with_watermark(
        rig.events_db, rig.tmp_path / "caught-up.duckdb", datetime(2026, 11, 25, 11)
    )
    assert rig.run(events_db=caught_up).success
    (key,) = rig.objects()
    _, rows = delivered_rows(fetch(rig.s3, rig.bucket, key))
    assert rows == source_rows(rig.events_db, "clicks", START, END)[1]


def test_without_a_watermark_an_event_stamped_in_the_future_completes_nothing(
    rig: WindowRig,
) -> None:
    """Ingestion stalled at 10:07, and one click arrived stamped 2099 (a client's wrong
    clock): without a watermark the latest event stands in, but not one past the clock, so
    the 10:00-11:00 window is Failed, not delivered short."""
    rig.configure([("acme", "2026-11-24 00:00:00", rig.clicks("x"))])
    stalled = _copy_with_watermark(rig.events_db, rig.tmp_path / "stalled.duckdb", None)
    with duckdb.connect(str(stalled)) as con:
        con.execute("DELETE FROM clicks WHERE created_at >= '2026-11-25 10:07:00'")
        con.execute(
            "INSERT INTO clicks SELECT * REPLACE ('future-' || id AS id, "
            "TIMESTAMP '2099-01-01 00:00:00' AS created_at) FROM clicks LIMIT 1"
        )
    result = rig.run(events_db=stalled)
    assert not result.success
    assert rig.objects() == []
    (seen,) = observations(rig, "acme")
    assert seen.metadata["error_code"].value == "SourceIncomplete"
    assert "up to 2026-11-25 10:0" in seen.metadata["delivery_failed"].value
    assert "(latest event)" in seen.metadata["delivery_failed"].value


def test_a_window_run_waits_for_the_loaders_write_lock_and_delivers(rig: WindowRig) -> None:
    """A loader writing the DuckDB file (another process, holding its write lock) does not
    fail the window: the run's reads wait for the lock and deliver every row."""
    rig.configure([("acme", "2026-11-24 00:00:00", rig.clicks("x"))])
    loader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys\n"
            f"con = duckdb.connect({str(rig.events_db)!r})\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n"
            "con.close()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert loader.stdout is not None and loader.stdin is not None
        assert loader.stdout.readline() == "locked\n"
        with pytest.raises(duckdb.IOException, match="lock"):
            connect_events_file(rig.events_db, wait=timedelta(seconds=0.2))
        refused: list[str] = []
        real_connect = duckdb.connect

        def connect(*args: Any, **kwargs: Any) -> duckdb.DuckDBPyConnection:
            try:
                return real_connect(*args, **kwargs)
            except duckdb.IOException as exc:
                refused.append(str(exc))
                raise

        rig.monkeypatch.setattr(source.duckdb, "connect", connect)
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(rig.run)
            # The run has met the lock: only now does the loader commit and let go.
            wait_for("the run to meet the loader's lock", lambda: refused, timeout=60, every=0.1)
            loader.stdin.write("\n")
            loader.stdin.flush()
            result = running.result(timeout=120)
    finally:
        loader.kill()
        loader.wait()
    assert result.success
    (key,) = rig.objects()
    _, rows = delivered_rows(fetch(rig.s3, rig.bucket, key))
    assert rows == source_rows(rig.events_db, "clicks", START, END)[1] and rows


def test_a_manifest_beside_each_object_states_what_it_holds_and_is_the_same_on_redelivery(
    rig: WindowRig,
) -> None:
    """With `manifest: true`, each data object gets `_manifests/<name>.manifest.json` in its
    folder once complete: the documented format (docs/manifest.schema.json), the object's own
    size, SHA-256 and rows as a customer reads them back; a re-delivery writes the same bytes
    for both."""
    rig.configure(
        [
            ("acme", "2026-11-24 00:00:00", rig.clicks("x", "      manifest: true\n")),
            ("plain", "2026-11-24 00:00:00", rig.clicks("y")),
        ]
    )
    assert rig.run().success
    data_key, manifest_key, plain_key = rig.objects()
    folder, name = data_key.rsplit("/", 1)
    assert manifest_key == f"{folder}/_manifests/{name}.manifest.json"
    assert plain_key.startswith("y/")
    data = fetch(rig.s3, rig.bucket, data_key)
    written = fetch(rig.s3, rig.bucket, manifest_key)
    manifest = json.loads(written)
    schema = json.loads((ROOT / "docs" / "manifest.schema.json").read_text())
    assert problems(manifest, schema) == []
    # Every field the schema names, all required but the re-delivery's reason (a first delivery).
    assert (
        set(manifest)
        == set(schema["required"])
        == set(schema["properties"]) - {"redelivery_reason"}
    )
    header, rows = delivered_rows(data)
    assert rows == source_rows(rig.events_db, "clicks", START, END)[1] and rows
    assert manifest["object"] == {
        "name": data_key.rsplit("/", 1)[1],
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "format": "csv",
        "compression": "gzip",
    }
    assert manifest["rows"] == len(rows)
    assert manifest["columns"] == header
    assert manifest["window"] == {"start": "2026-11-25T10:00:00Z", "end": "2026-11-25T11:00:00Z"}
    assert manifest["event_type"] == "clicks"
    (record,) = rig.instance.fetch_materializations(
        dg.AssetKey(["affise", "acme", "clicks"]), limit=1
    ).records
    metadata = record.asset_materialization.metadata
    assert metadata["manifest_uri"].value == f"s3://{rig.bucket}/{manifest_key}"

    # The customer contract's check (docs/customer-contract.md) passes on the day, and catches
    # a file changed since.
    check = readme_manifest_check(rig.bucket, data_key.rsplit("/", 1)[0] + "/")
    exec(check, {"CLIENT": rig.s3.client()})
    rig.s3.client().put_object(
        Bucket=rig.bucket, Key=data_key, Body=data[:-1] + bytes([data[-1] ^ 0xFF])
    )
    with pytest.raises(AssertionError, match=r"\.manifest\.json"):
        exec(check, {"CLIENT": rig.s3.client()})

    assert rig.run().success
    assert fetch(rig.s3, rig.bucket, manifest_key) == written
    assert fetch(rig.s3, rig.bucket, data_key) == data


def test_a_manifest_that_cannot_be_written_fails_its_window_and_the_next_run_completes_it(
    rig: WindowRig,
) -> None:
    """The data object without its manifest is not announced as complete: its window is
    Failed, naming the manifest's key, and once the manifest can be written a re-delivery
    writes both."""
    # No data key says manifest.
    deny_intruders_puts(rig.s3, rig.bucket, "*manifest*")
    rig.monkeypatch.setenv("TEST_ACCESS_KEY_ID", rig.s3.intruder.access_key)
    rig.monkeypatch.setenv("TEST_SECRET_ACCESS_KEY", rig.s3.intruder.secret_key)
    rig.configure([("acme", "2026-11-24 00:00:00", rig.clicks("x", "      manifest: true\n"))])
    result = rig.run()
    assert not result.success
    (data_key,) = rig.objects()
    assert rig.status("acme", [WINDOW]) == ["FAILED"]
    (seen,) = observations(rig, "acme")
    folder, name = data_key.rsplit("/", 1)
    manifest_key = f"{folder}/_manifests/{name}.manifest.json"
    assert f"key '{manifest_key}'" in seen.metadata["delivery_failed"].value
    assert seen.metadata["error_code"].value == "AccessDenied"
    assert seen.partition == WINDOW and not materializations(rig, "acme")

    rig.s3.client().delete_bucket_policy(Bucket=rig.bucket)
    rig.monkeypatch.setenv("TEST_ACCESS_KEY_ID", rig.s3.customer.access_key)
    rig.monkeypatch.setenv("TEST_SECRET_ACCESS_KEY", rig.s3.customer.secret_key)
    assert rig.run().success
    assert rig.objects() == [data_key, manifest_key]
    manifest = json.loads(fetch(rig.s3, rig.bucket, manifest_key))
    data = fetch(rig.s3, rig.bucket, data_key)
    assert manifest["object"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_store_whose_answers_say_it_holds_other_bytes_fails_the_window_until_they_agree(
    rig: WindowRig,
) -> None:
    """Each object is verified from the store's own answers (no read-back: least privilege).
    A store answering another ETag than the MD5 sent fails that window, as its check says,
    and harms no other integration; once its answers agree, the re-delivery passes."""
    with etag_rewriting_proxy(rig.s3.endpoint_url) as (url, switch):
        rig.configure(
            [
                ("acme", "2026-11-24 00:00:00", rig.clicks("x").replace(rig.s3.endpoint_url, url)),
                ("good", "2026-11-24 00:00:00", rig.clicks("good")),
            ]
        )
        result = rig.run()
        assert not result.success
        assert rig.status("acme", [WINDOW]) == ["FAILED"]
        assert rig.materialized("good") == {WINDOW}
        (seen,) = observations(rig, "acme")
        assert seen.metadata["error_code"].value == "VerificationFailed"
        assert "is not the MD5 sent" in seen.metadata["delivery_failed"].value
        assert seen.partition == WINDOW and not materializations(rig, "acme")
        (good,) = materializations(rig, "good")
        assert good.metadata["verified_by"].value == "etag"

        switch.lying = False
        again = rig.run(only=["acme"])
    assert again.success
    assert rig.status("acme", [WINDOW]) == ["MATERIALIZED"]
    (delivered,) = materializations(rig, "acme")
    assert delivered.partition == WINDOW and delivered.metadata["verified_by"].value == "etag"
    assert delivered.metadata["verified"].value == "the store's ETag is the MD5 of the bytes sent"


@pytest.mark.parametrize(
    "shape", ["empty directory", "day folder missing", "day folder gap", "day folder in 2099"]
)
def test_a_dataset_with_no_data_for_the_window_delivers_no_empty_file(
    rig: WindowRig, events_db: Path, shape: str
) -> None:
    """An unmounted volume (an empty directory) or a Parquet day folder that has not arrived
    (the newest, or one between others) is not "no events", nor are events stamped years
    ahead: nothing is delivered and the window is Failed with the reason."""
    dataset = rig.tmp_path / "dataset"
    (dataset / "clicks").mkdir(parents=True)
    days = {
        "day folder missing": ["2026-11-24"],
        "day folder gap": ["2026-11-24", "2026-11-26"],
        # A client's wrong clock: a folder past today is no progress.
        "day folder in 2099": ["2099-11-25"],
    }
    with duckdb.connect(str(events_db), read_only=True) as con:
        for date in days.get(shape, []):
            day = dataset / "clicks" / f"date={date}"
            day.mkdir()
            # The 25th's rows moved to that day: a dataset with events past the window.
            shift = (datetime.strptime(date, "%Y-%m-%d") - datetime(2026, 11, 25)).days
            con.execute(
                f"COPY (SELECT * REPLACE (created_at + INTERVAL ({shift}) DAY AS created_at) "
                f"FROM clicks) TO '{day / 'part-0.parquet'}' (FORMAT parquet)"
            )
    rig.configure([("acme", "2026-11-24 00:00:00", rig.clicks("x"))])
    result = rig.run(events_db=dataset)
    assert not result.success
    assert rig.objects() == []
    assert rig.status("acme", [WINDOW]) == ["FAILED"]
    (seen,) = observations(rig, "acme")
    assert seen.metadata["error_code"].value == "SourceIncomplete"


@pytest.mark.parametrize("trickle_every", [None, 0.5], ids=["silent", "trickling"])
def test_a_destination_that_never_answers_fails_at_its_deadline_and_delays_no_other(
    rig: WindowRig, monkeypatch: pytest.MonkeyPatch, trickle_every: float | None
) -> None:
    """An endpoint that accepts and never answers (or trickles a byte now and then, which no
    per-read timeout ends) fails its own object at the request deadline, as DeliveryTimeout;
    the healthy integration's object is delivered and reported first, not after it."""
    monkeypatch.setenv("AFFISE_REQUEST_DEADLINE_SECONDS", "3")
    with stalling_endpoint(trickle_every) as url:
        stalled = rig.clicks("stalled").replace(rig.s3.endpoint_url, url)
        rig.configure(
            [
                ("good", "2026-11-24 00:00:00", rig.clicks("good")),
                ("stalled", "2026-11-24 00:00:00", stalled),
            ]
        )
        result = rig.run()
    assert not result.success
    assert rig.materialized("good") == {WINDOW}
    assert rig.objects() == ["good/2026/11/25/2026-11-25 10:00:00.csv.gz"]
    assert rig.status("stalled", [WINDOW]) == ["FAILED"]
    (seen,) = observations(rig, "stalled")
    assert seen.metadata["error_code"].value == "DeliveryTimeout"
    # 3 s, plus a second per MiB of the request's body (well under one here).
    assert (
        "a request got no complete answer in time (3 s for it"
        in seen.metadata["delivery_failed"].value
    )
    # In the run's event log, the healthy object's materialization comes before the
    # stalled one's failure: nobody waited for it.
    order = [
        (event.dagster_event.event_type_value, event.dagster_event.asset_key.path[1])
        for event in rig.instance.all_logs(result.run_id)
        if event.dagster_event is not None
        and event.dagster_event.event_type_value in ("ASSET_MATERIALIZATION", "ASSET_OBSERVATION")
    ]
    assert order == [("ASSET_MATERIALIZATION", "good"), ("ASSET_OBSERVATION", "stalled")]
