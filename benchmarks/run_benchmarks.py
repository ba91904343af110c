"""Benchmarks: prints numbers, asserts nothing about speed.

    .venv/bin/python benchmarks/run_benchmarks.py [--record]   # the headline figures
    .venv/bin/python benchmarks/run_benchmarks.py --only export --only scale ...

0. Headline (the default, `--only headline`): the one-day window (--rows rows) and a 15-minute
   window through the export step, each beside DuckDB's COPY of it in the same run (ratio,
   peak RSS, object size), the one-day window as Parquet (wall, peak RSS, object size), and
   what an integration costs a 15-minute window run at 100 and 1,000 integrations on SQLite
   and on Postgres (deploy/dagster.yaml's storages). Each figure
   is compared with the last recorded in benchmarks/figures.json, and a line starting with
   REGRESSION is printed for one more than 10% worse; `--record` writes the figures there (each
   no worse than the one recorded, which otherwise stays),
   and `--table` prints benchmarks/README.md's table from that file.
1. Export: a one-day clicks table of --rows rows (demo generator); the one-day window and a
   15-minute window go through the real asset code path (dg.materialize, the S3 writer resource,
   a real S3 server from scripts/s3-server.sh) and, as the reference, through DuckDB's
   `COPY ... (COMPRESSION gzip)`. Each case runs in its own process, so its peak RSS is its own.
   The delivered object is verified: row count and a sample of rows against the source.
2. Profile: the one-day window cut after each stage of the asset path (read and sort, CSV,
   gzip, upload), wall and CPU seconds of each, the S3 server's own CPU, and the alternative to
   sorted sub-windows: DuckDB sorting the whole window under a memory limit; then the whole
   asset path's CPU by thread and its RSS over time.
3. Source: the same 15-minute window read from a Hive-partitioned Parquet dataset, and the
   one-day and the 15-minute window through the asset path from that dataset on local disk
   and on the S3 server (`s3://`, read in place), with the S3 server's requests counted.
4. Scale: --integrations integrations x 2 event types: definitions import, `dagster
   definitions validate`, a sensor tick and a schedule tick; then window jobs delivering every
   integration's clicks for several consecutive 15-minute windows at 20M clicks/day in total.
5. Slow destination (`--only slow`): one integration's endpoint never answers, among 50 in
   one window job: when the other objects land, against the same run with none dead.
6. File format (`--only format`): the one-day window as gzipped CSV and as Parquet through
   the asset path: wall, peak RSS, object size.
7. Reconciliation (`--only reconcile`): the fingerprints of every 15-minute window of the
   one-day table (reconciliation's one query over a look-back of that many rows) for 1, 10,
   100 and 1,000 distinct filters.
8. Shards (`--only shards`): a 15-minute window of 1,000 and 10,000 integrations delivered by
   1, 2 and 4 runs at once on Postgres: first start to last end, and per integration.
9. Deployment (`--only deployment`): the production deployment of scripts/prod-local.sh with
   1,000 and 10,000 integrations' 15-minute clicks, a window's close on the clock to its first
   run's start and its last object (schedule tick, queue, run workers, deliveries).
Everything it writes is under benchmarks/out/ (git-ignored), but --record's
benchmarks/figures.json.
"""

import argparse
import contextlib
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
PYTHON = sys.executable
DAY = datetime(2026, 11, 25)
S3_ENV = {"S3_DIR": "/tmp/affise-bench-s3", "RGW_PORT": "7482", "MON_PORT": "6791"}
ENDPOINT = f"http://127.0.0.1:{S3_ENV['RGW_PORT']}"
KEY, SECRET = "BENCHACCESSKEY000001", "bench-secret-key-000001"
BUCKET = "affise-bench"
# DuckDB's budget when it sorts a whole window itself (the alternative to sorted sub-windows).
ORDER_BY_MEMORY = "256MB"


def peak_rss_mb() -> float:
    """This process's own peak RSS. Not getrusage's ru_maxrss: Linux carries that across exec,
    so a child would report at least its parent's peak."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def cpu_seconds() -> float:
    """User + system CPU of this process, all threads (DuckDB, polars and ISA-L included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class ThreadSampler:
    """CPU seconds by thread and RSS over time of this process, sampled from /proc every
    `interval` s while the measured work runs (`BENCH_THREADS=1`). A thread is named by its
    Python name (`csv-producer`, `s3-close_3`...) when it has one, else by the kernel's
    (`polars-0`, `async-executor-`, DuckDB's unnamed ones show as `python`); its CPU is its
    last sample, so a thread that ended between two samples loses at most `interval`."""

    def __init__(self, interval: float = 0.25) -> None:
        import threading

        self.interval, self.stop = interval, threading.Event()
        self.cpu: dict[int, tuple[str, float]] = {}
        self.rss: list[tuple[float, float]] = []
        self.started = time.perf_counter()
        self.thread = threading.Thread(target=self.run, name="bench-sampler", daemon=True)
        self.thread.start()

    def sample(self) -> None:
        import threading

        names = {t.native_id: t.name for t in threading.enumerate()}
        ticks = os.sysconf("SC_CLK_TCK")
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):
                stat = (task / "stat").read_text()
                comm = stat[stat.index("(") + 1 : stat.rindex(")")]
                fields = stat.rsplit(")", 1)[1].split()
                tid = int(task.name)
                name = re.sub(r"_\d+$", "", names.get(tid, comm))  # s3-close_3: s3-close
                self.cpu[tid] = (name, (int(fields[11]) + int(fields[12])) / ticks)
        status = Path("/proc/self/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]
        self.rss.append((time.perf_counter() - self.started, rss))

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()

    def result(self) -> dict[str, Any]:
        self.stop.set()
        self.thread.join()
        self.sample()
        by_name: dict[str, float] = {}
        for name, seconds in self.cpu.values():
            if name != "bench-sampler":
                by_name[name] = by_name.get(name, 0.0) + seconds
        return {"threads": by_name, "rss_over_time": self.rss}


def emit(result: dict[str, Any]) -> None:
    print(json.dumps({**result, "peak_rss_mb": peak_rss_mb(), "cpu": cpu_seconds()}))


def run_child(args: list[str], env: dict[str, str] | None = None) -> tuple[dict[str, Any], float]:
    """Run this script in child mode; returns its JSON answer and its own peak RSS (MB)."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [PYTHON, __file__, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        text=True,
    )
    out, err = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{err[-4000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    # The whole process, start-up and imports included: what a run launched per window costs.
    result["process_wall"] = time.perf_counter() - started
    return result, result["peak_rss_mb"]


# ---------------------------------------------------------------- children (one process each)


def child_export(db: str, frequency: int, partition: str) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import dagster as dg

    from affise_s3_assets.config.apply import parse_integrations
    from affise_s3_assets.config.targets import build_export_targets, build_window_groups
    from affise_s3_assets.definitions import event_sources
    from affise_s3_assets.delivery.step import S3_WRITER_KEY, build_window_asset
    from affise_s3_assets.delivery.writer import DateFolderS3Writer
    from affise_s3_assets.source.events import EventsDatabase

    config = parse_integrations(
        f"""
integrations:
  - name: bench
    start: "{DAY:%Y-%m-%d %H:%M:%S}"
    clicks:
      frequency: {frequency}
      bucket: {BUCKET}
      region: us-east-1
      directory: export/{frequency}
      access_key: ${{BENCH_AWS_ACCESS_KEY_ID}}
      secret_key: ${{BENCH_AWS_SECRET_ACCESS_KEY}}
      endpoint_url: {ENDPOINT}
      format: {os.environ.get("BENCH_FORMAT", "csv")}
"""
    ).integrations
    (group,) = build_window_groups(build_export_targets(config))
    asset = build_window_asset(group)
    sampler = ThreadSampler() if os.environ.get("BENCH_THREADS") else None
    with dg.instance_for_test() as instance:
        started = time.perf_counter()
        dg.materialize(
            [asset, *event_sources],
            selection=list(asset.keys),
            partition_key=partition,
            instance=instance,
            resources={
                "events": EventsDatabase(
                    path=db, **json.loads(os.environ.get("BENCH_SOURCE", "{}"))
                ),
                S3_WRITER_KEY: DateFolderS3Writer(),
            },
        )
        wall = time.perf_counter() - started
        (key,) = asset.keys
        materialization = instance.get_latest_materialization_event(key).asset_materialization
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    emit({"wall": wall, **metadata, **(sampler.result() if sampler else {})})


def child_stage(db: str, stage: str) -> None:
    """One day's window through the first stages of the asset path only, or the alternative
    the issue asks to compare: one DuckDB `ORDER BY` under a memory limit, spilling to disk."""
    import polars as pl

    from affise_s3_assets.encoding.csv_gzip import CsvText, gzip_csv
    from affise_s3_assets.source.event_types import EVENT_COLUMNS, window_query
    from affise_s3_assets.source.events import EventsDatabase

    start, end = DAY, DAY + timedelta(days=1)
    events = EventsDatabase(path=db)
    rows = 0
    started = time.perf_counter()
    if stage == "order-by":
        import duckdb

        with duckdb.connect(db, read_only=True) as con:
            con.execute(f"SET memory_limit = '{ORDER_BY_MEMORY}'")
            con.execute(f"SET temp_directory = '{OUT / 'duckdb-spill'}'")
            query = window_query("clicks") + " ORDER BY created_at, id"
            reader = con.sql(query, params=[start, end]).to_arrow_reader(events.batch_rows)
            for batch in reader:
                rows += pl.DataFrame(batch).height
    elif stage == "read-sort":
        for frame in events.window_frames("clicks", start, end):
            rows += frame.height
    elif stage == "csv":
        text = CsvText()
        for frame in events.window_frames("clicks", start, end):
            text.write(frame)
            rows += frame.height
    elif stage == "gzip":

        def counted():
            nonlocal rows
            for frame in events.window_frames("clicks", start, end):
                rows += frame.height
                yield frame

        for _chunk in gzip_csv(counted(), EVENT_COLUMNS["clicks"]):
            pass
    emit({"wall": time.perf_counter() - started, "rows": rows})


def child_duckdb_copy(db: str, start: str, end: str, target: str) -> None:
    import duckdb

    from affise_s3_assets.source.event_types import window_query

    query = window_query("clicks").replace("$1", f"TIMESTAMP '{start}'")
    query = query.replace("$2", f"TIMESTAMP '{end}'") + " ORDER BY created_at, id"
    started = time.perf_counter()
    with duckdb.connect(db, read_only=True) as con:
        con.execute(
            f"COPY ({query}) TO '{target}' (FORMAT csv, HEADER, COMPRESSION gzip, "
            "TIMESTAMPFORMAT '%Y-%m-%d %H:%M:%S')"
        )
    emit({"wall": time.perf_counter() - started, "bytes": Path(target).stat().st_size})


def child_import(integrations: str) -> None:
    os.environ["AFFISE_INTEGRATIONS"] = integrations
    started = time.perf_counter()
    import affise_s3_assets.definitions as definitions

    imported = time.perf_counter() - started
    started = time.perf_counter()
    # The module's definitions are built when Dagster asks for them (`@dg.definitions`).
    repository = definitions.defs().get_repository_def()
    resolved = time.perf_counter() - started
    emit(
        {
            "import": imported,
            "resolve": resolved,
            "assets": len(repository.asset_graph.get_all_asset_keys()),
            "schedules": len(repository.schedule_defs),
            "jobs": len(repository.get_all_jobs()),
        }
    )


def child_ticks(integrations: str) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import dagster as dg

    from affise_s3_assets.automation.catch_up import StoredState
    from affise_s3_assets.definitions import build_definitions

    defs = build_definitions(integrations)
    repository = defs.get_repository_def()
    # As a code server does when it loads the location: every job resolved once, up front.
    repository.get_all_jobs()
    sensor = repository.get_sensor_def("catch_up_sensor")
    config_sensor = repository.get_sensor_def("integrations_config_sensor")
    timings: dict[str, float] = {}
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, definitions=defs)
        started = time.perf_counter()
        first = sensor.evaluate_tick(context)
        timings["sensor_first_tick"] = time.perf_counter() - started
        context = dg.build_sensor_context(instance=instance, definitions=defs, cursor=first.cursor)
        started = time.perf_counter()
        sensor.evaluate_tick(context)
        timings["sensor_next_tick"] = time.perf_counter() - started
        timings["cursor_kb"] = len(first.cursor or "") / 1024
        stored = StoredState.of(context).stored_text(instance, first.cursor or "")
        timings["state_kb"] = len(stored or "") / 1024
        started = time.perf_counter()
        config_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
        timings["config_sensor_tick"] = time.perf_counter() - started
        # On the hour every schedule ticks; the scheduler evaluates them one after another.
        tick = datetime.now().replace(second=0, microsecond=0)
        tick -= timedelta(minutes=tick.minute % 60)
        started = time.perf_counter()
        created = 0
        for each in repository.schedule_defs:
            context = dg.build_schedule_context(
                instance=instance, scheduled_execution_time=tick, repository_def=repository
            )
            created += len(each.evaluate_tick(context).run_requests or [])
        timings["all_schedules_tick"] = time.perf_counter() - started
        timings["all_schedules_runs"] = created
        timings.update(latest_window_ticks(instance, integrations))
    timings["first_tick_runs"] = len(first.run_requests)
    emit(timings)


def latest_window_ticks(instance: Any, integrations: str) -> dict[str, float]:
    """latest_window_sensor's ticks with every live export's judged window delivered: the first
    verdicts (every export judged and recorded, over the ticks the sensor's budget takes), the
    next tick (nothing changed), and one that judges every export again (a cursor without the
    event log's position; that tick too stops at the budget)."""
    import dagster as dg

    from affise_s3_assets.automation.freshness import (
        LatestWindowCursor,
        build_latest_window_sensor,
        judged_window,
    )
    from affise_s3_assets.automation.live_config import apply_file
    from affise_s3_assets.config.targets import build_export_targets, build_window_groups

    applied = apply_file(Path(integrations))
    groups = build_window_groups(build_export_targets(applied.integrations), applied.lateness)
    live = [group for group in groups if group.live]
    now = datetime.now(UTC).replace(tzinfo=None)
    sensor = build_latest_window_sensor(live, clock=lambda: now)
    for group in live:
        for target in group.live:
            window = judged_window(target, group.lateness, now)
            if window is not None:
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(target.asset_key, partition=window)
                )

    def tick(cursor: str | None) -> tuple[float, str | None]:
        started = time.perf_counter()
        result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor))
        return time.perf_counter() - started, result.cursor

    # The first verdicts, over as many ticks as the sensor's budget takes.
    timings = {"latest_first_tick": 0.0, "latest_first_ticks": 0}
    cursor = None
    while timings["latest_first_ticks"] == 0 or LatestWindowCursor.parse(cursor).pending:
        spent, cursor = tick(cursor)
        timings["latest_first_tick"] += spent
        timings["latest_first_ticks"] += 1
    timings["latest_next_tick"], cursor = tick(cursor)
    cursor = LatestWindowCursor(None, LatestWindowCursor.parse(cursor).verdicts).text()
    timings["latest_every_export_tick"], _ = tick(cursor)
    return timings


def child_window(integrations: str, db: str, partition: str, last: str = "") -> None:
    """One window job run as a run worker would do it: definitions loaded, one window (or a
    range through `last`) for every live integration due."""
    import warnings

    warnings.filterwarnings("ignore")

    os.environ["AFFISE_EVENTS_DB"] = db
    from affise_s3_assets.automation.live_config import apply_file
    from affise_s3_assets.config.targets import build_export_targets, build_window_groups
    from affise_s3_assets.definitions import build_definitions

    applied = apply_file(Path(integrations))
    groups = build_window_groups(build_export_targets(applied.integrations))
    job_name = os.environ.get("BENCH_JOB", "clicks_every_15min_job")
    (group,) = [g for g in groups if g.job_name == job_name]
    start = datetime.strptime(partition, "%Y-%m-%d-%H:%M")
    job = build_definitions(applied).resolve_job_def(job_name)
    # The cluster's event log (docs/scaling.md) is Postgres; SQLite is `dagster dev`'s.
    url = os.environ.get("BENCH_POSTGRES_URL")
    with bench_instance(url) as instance:
        started = time.perf_counter()  # the run's creation (its planned events) on
        tags = (
            {
                "dagster/asset_partition_range_start": partition,
                "dagster/asset_partition_range_end": last,
            }
            if last
            else None
        )
        selection = [t.asset_key for t in group.due(start)]
        shard = os.environ.get("BENCH_SHARD")  # "i/n": the i-th of the schedule's n runs
        if shard:
            from affise_s3_assets.automation.schedules import scheduled_run_requests

            index, runs = map(int, shard.split("/"))
            requests = scheduled_run_requests(group, start, size=-(-len(selection) // runs))
            selection = list(requests[index - 1].asset_selection or selection)
        # As the schedule's and the catch-up's run requests select them (`asset_check_keys=[]`):
        # the exports without their checks (execute_in_process's selection takes them along).
        subset = job.get_subset(asset_selection=set(selection), asset_check_selection=set())
        result = subset.execute_in_process(
            partition_key=None if last else partition,
            tags=tags,
            instance=instance,
            raise_on_error=not os.environ.get("BENCH_MAY_FAIL"),
        )
        assert result.success or os.environ.get("BENCH_MAY_FAIL")
        wall = time.perf_counter() - started
        # This run's own: a Postgres event log keeps the earlier windows' too.
        events = [
            e
            for e in instance.all_logs(result.run_id)
            if e.dagster_event is not None and e.dagster_event.is_step_materialization
        ]
        first_event = min(e.timestamp for e in instance.all_logs(result.run_id))
        last = max((e.timestamp for e in events), default=first_event) - first_event
    emit({"wall": wall, "objects": len(events), "last_object_s": last})


@contextlib.contextmanager
def bench_instance(postgres_url: str | None) -> Iterator[Any]:
    """A throwaway instance with the storage of the deployment (deploy/dagster.yaml's, on
    `postgres_url`) or of `dagster dev` (scripts/dagster.dev.yaml, SQLite)."""
    import tempfile

    import dagster as dg

    if postgres_url:
        with dg.instance_for_test(overrides=deployment_storage(postgres_url)) as instance:
            yield instance
        return
    # A home kept across runs (BENCH_SQLITE_HOME) is warm, as `dagster dev`'s is: its
    # databases exist; a new one pays for creating them.
    kept = os.environ.get("BENCH_SQLITE_HOME")
    with contextlib.ExitStack() as stack:
        home = kept or stack.enter_context(tempfile.TemporaryDirectory(dir=OUT))
        Path(home).mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "scripts" / "dagster.dev.yaml", Path(home) / "dagster.yaml")
        os.environ["DAGSTER_HOME"] = home
        with dg.DagsterInstance.from_config(home) as instance:
            yield instance


def deployment_storage(url: str) -> dict[str, Any]:
    """The storage sections of deploy/dagster.yaml (the deployment's own classes), at `url`."""
    import yaml

    config = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    return {
        section: {
            "module": config[section]["module"],
            "class": config[section]["class"],
            "config": {"postgres_url": url},
        }
        for section in ("run_storage", "event_log_storage", "schedule_storage")
    }


# ---------------------------------------------------------------- parent


def s3_client() -> Any:
    import boto3
    import botocore.config

    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    )


def start_s3() -> None:
    env = {**os.environ, **S3_ENV, "MEMSTORE_BYTES": str(8 * 2**30)}
    env.update(S3_ACCESS_KEY=KEY, S3_SECRET_KEY=SECRET)
    subprocess.run(
        ["bash", "scripts/s3-server.sh", "start"],
        env=env,
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    s3_client().create_bucket(Bucket=BUCKET)


def stop_s3() -> None:
    env = {**os.environ, **S3_ENV}
    subprocess.run(["bash", "scripts/s3-server.sh", "stop"], env=env, cwd=ROOT, check=False)


def events_db(per_day: int, start: datetime, end: datetime, name: str) -> Path:
    """A demo events file, generated once and kept under benchmarks/out/."""
    from affise_s3_assets.demo.events import generate_demo_events

    path = OUT / f"{name}-{per_day}-{start:%Y%m%d%H}-{end:%Y%m%d%H}.duckdb"
    if not path.exists():
        started = time.perf_counter()
        scratch = path.with_suffix(".tmp")
        scratch.unlink(missing_ok=True)
        generate_demo_events(scratch, start, end, per_day, 7)
        scratch.rename(path)
        print(
            f"generated {path.name} ({per_day:,} clicks/day from {start} to {end}) "
            f"in {time.perf_counter() - started:.0f} s"
        )
    # Complete up to its end (files generated before watermarks existed have none): the
    # windows it holds are then deliverable, not SourceIncomplete.
    from affise_s3_assets.demo.events import load_schema
    from affise_s3_assets.source.completeness import write_watermark
    from affise_s3_assets.source.duckdb_file import connect_events_file

    with connect_events_file(path, read_only=False) as con:
        load_schema(con)
        for event_type in ("clicks", "conversions"):
            write_watermark(con, event_type, end)
    return path


FIRST_AFFILIATE = 100_000


def fanout_db(count: int) -> Path:
    """20M clicks/day spread over `count` affiliates, one per simulated integration."""
    path = OUT / f"fanout-{count}-affiliates.duckdb"
    if not path.exists():
        source = events_db(
            20_000_000, DAY + timedelta(hours=10), DAY + timedelta(hours=12), "fanout"
        )
        spread_over_affiliates(source, path, count)
    return path


def spread_over_affiliates(source: Path, path: Path, count: int) -> None:
    """`source`'s events written to `path` with their clicks spread over `count` affiliates,
    one per simulated integration."""
    import duckdb

    scratch = path.with_suffix(".tmp")
    scratch.write_bytes(source.read_bytes())
    with duckdb.connect(str(scratch)) as con:
        con.execute(f"UPDATE clicks SET affiliate_id = {FIRST_AFFILIATE} + hash(id) % {count}")
    scratch.rename(path)


def verify_parquet(key: str, rows: int) -> str:
    """Download the Parquet object and read its row count back from its footer."""
    import io

    import pyarrow.parquet as pq

    data = s3_client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    read = pq.read_metadata(io.BytesIO(data)).num_rows
    return f"ok ({read:,} rows)" if read == rows else f"FAILED: {read} rows read back, {rows} sent"


def verify(db: Path, key: str, start: datetime, end: datetime, rows: int) -> str:
    """Download, gunzip, parse; compare the row count and 1,000 sampled rows with DuckDB. The
    object is parsed whole (a 10M-row day: ~10 GB in this process); of the source, DuckDB
    sorts the window and hands back the sampled rows only."""
    import duckdb
    import polars as pl

    body = s3_client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    frame = pl.read_csv(body, infer_schema=False)  # polars gunzips it
    del body
    if frame.height != rows:
        return f"FAILED: {frame.height} rows in the object, {rows} expected"
    sample = sorted(random.Random(1).sample(range(rows), min(1000, rows)))
    with duckdb.connect(str(db), read_only=True) as con:
        con.execute("SET memory_limit = '2GB'")
        con.execute(f"SET temp_directory = '{OUT / 'verify-spill'}'")
        ((counted,),) = con.execute(
            "SELECT count(*) FROM clicks WHERE created_at >= $1 AND created_at < $2",
            [start, end],
        ).fetchall()
        source = con.sql(
            "SELECT * EXCLUDE (n) FROM (SELECT *, row_number() OVER (ORDER BY created_at, id) - 1"
            " AS n FROM clicks WHERE created_at >= $1 AND created_at < $2) "
            "WHERE list_contains($3, n) ORDER BY n",
            params=[start, end, sample],
        ).pl()
    if counted != rows:
        return f"FAILED: source has {counted} rows"
    expected = source.with_columns(
        pl.col("created_at").dt.strftime("%Y-%m-%d %H:%M:%S"),
        pl.col("uniq").cast(pl.String).str.to_lowercase(),
    ).cast(pl.String)
    got = frame[sample]
    for column in expected.columns:
        left = expected[column].fill_null("").to_list()
        right = got[column].fill_null("").to_list()
        if left != right:
            return f"FAILED: column {column} differs in the sample"
    return f"ok ({frame.height:,} rows, 1,000 sampled rows equal the source)"


def export_cases(rows: int) -> None:
    db = events_db(rows, DAY, DAY + timedelta(days=1), "export")
    cases = [("one-day window", 1440, DAY, DAY + timedelta(days=1))]
    quarter = DAY + timedelta(hours=10, minutes=15)
    cases.append(("15-minute window", 15, quarter, quarter + timedelta(minutes=15)))
    print(
        f"\n## Export, {rows:,}-row one-day clicks table "
        f"({db.stat().st_size / 2**20:.0f} MB DuckDB file)"
    )
    header = (
        "case",
        "pipeline",
        "rows",
        "wall s",
        "rows/s",
        "CSV MB/s",
        "peak RSS MB",
        "object MB",
        "ratio",
        "vs DuckDB",
    )
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for label, frequency, start, end in cases:
        partition = start.strftime("%Y-%m-%d-%H:%M")
        ours, ours_rss = run_child(
            ["--child", "export", str(db), str(frequency), partition],
            {"BENCH_AWS_ACCESS_KEY_ID": KEY, "BENCH_AWS_SECRET_ACCESS_KEY": SECRET},
        )
        target = OUT / f"duckdb-copy-{frequency}.csv.gz"
        ref, ref_rss = run_child(
            [
                "--child",
                "copy",
                str(db),
                f"{start:%Y-%m-%d %H:%M:%S}",
                f"{end:%Y-%m-%d %H:%M:%S}",
                str(target),
            ]
        )
        target.unlink()
        csv_mb = ours["csv_bytes"] / 1e6
        for name, result, rss, size in (
            ("ours (asset → S3)", ours, ours_rss, ours["object_bytes"]),
            ("DuckDB COPY gzip (local file)", ref, ref_rss, ref["bytes"]),
        ):
            wall = result["wall"]
            print(
                f"| {label} | {name} | {ours['rows']:,} | {wall:.1f} | "
                f"{ours['rows'] / wall:,.0f} | {csv_mb / wall:.0f} | {rss:.0f} | "
                f"{size / 1e6:.1f} | {ours['csv_bytes'] / size:.2f} | {wall / ref['wall']:.2f} |"
            )
        key = str(ours["s3_uri"]).removeprefix(f"s3://{BUCKET}/")
        print(f"verify {label}: {verify(db, key, start, end, ours['rows'])}")
        # The server keeps objects in RAM: a repeated run must not fill it.
        s3_client().delete_object(Bucket=BUCKET, Key=key)


def format_cases(rows: int) -> None:
    """The one-day window through the asset path as gzipped CSV and as Parquet; the CSV object
    is read back and sampled against the source (`verify`), the Parquet one's row count read
    from its footer (`verify_parquet`)."""
    db = events_db(rows, DAY, DAY + timedelta(days=1), "export")
    print(f"\n## File format, {rows:,}-row one-day clicks window through the asset path")
    header = ("format", "rows", "wall s", "rows/s", "peak RSS MB", "object MB", "check")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    partition = DAY.strftime("%Y-%m-%d-%H:%M")
    for file_format in ("csv", "parquet"):
        result, rss = run_child(
            ["--child", "export", str(db), "1440", partition],
            {
                "BENCH_AWS_ACCESS_KEY_ID": KEY,
                "BENCH_AWS_SECRET_ACCESS_KEY": SECRET,
                "BENCH_FORMAT": file_format,
            },
        )
        key = str(result["s3_uri"]).removeprefix(f"s3://{BUCKET}/")
        if file_format == "csv":
            check = verify(db, key, DAY, DAY + timedelta(days=1), result["rows"])
        else:
            check = verify_parquet(key, result["rows"])
        print(
            f"| {file_format} | {result['rows']:,} | {result['wall']:.1f} | "
            f"{result['rows'] / result['wall']:,.0f} | {rss:.0f} | "
            f"{result['object_bytes'] / 1e6:.1f} | {check} |"
        )
        s3_client().delete_object(Bucket=BUCKET, Key=key)


def server_cpu_seconds() -> float:
    """CPU used so far by the S3 server's daemons (RGW, OSD, monitor), from their pid files."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid_file in Path(S3_ENV["S3_DIR"], "run").glob("*.pid"):
        stat = Path(f"/proc/{pid_file.read_text().strip()}/stat").read_text()
        utime, stime = stat.rsplit(")", 1)[1].split()[11:13]
        total += (int(utime) + int(stime)) / ticks
    return total


def profile_cases(rows: int) -> None:
    """Where the one-day window's time goes: the asset path cut after each stage, each in its
    own process, CPU of all threads; then DuckDB sorting the whole window instead."""
    db = events_db(rows, DAY, DAY + timedelta(days=1), "export")
    print(
        f"\n## Profile: the one-day window ({rows:,} rows), stage by stage, {os.cpu_count()} cores"
    )
    print(
        "| pipeline | wall s | CPU s | cores busy | CPU added s | peak RSS MB |\n"
        "|---|---|---|---|---|---|"
    )
    previous = 0.0
    stages = (
        ("read-sort", "DuckDB sub-windows → polars, each sorted"),
        ("csv", "+ polars CSV (into reused memory)"),
        ("gzip", "+ gzip (ISA-L, level 1)"),
    )
    for stage, label in stages:
        result, rss = run_child(["--child", "stage", str(db), stage])
        cpu = result["cpu"]
        print(
            f"| {label} | {result['wall']:.1f} | {cpu:.1f} | {cpu / result['wall']:.2f} | "
            f"{cpu - previous:.1f} | {rss:.0f} |"
        )
        previous = cpu
    server_before = server_cpu_seconds()
    ours, rss = run_child(
        ["--child", "export", str(db), "1440", DAY.strftime("%Y-%m-%d-%H:%M")],
        {
            "BENCH_AWS_ACCESS_KEY_ID": KEY,
            "BENCH_AWS_SECRET_ACCESS_KEY": SECRET,
            "BENCH_THREADS": "1",
        },
    )
    server = server_cpu_seconds() - server_before
    s3_client().delete_object(
        Bucket=BUCKET, Key=str(ours["s3_uri"]).removeprefix(f"s3://{BUCKET}/")
    )
    cpu = ours["cpu"]
    print(
        f"| + Dagster run, multipart upload (the asset path) | {ours['wall']:.1f} | {cpu:.1f} | "
        f"{cpu / ours['wall']:.2f} | {cpu - previous:.1f} | {rss:.0f} |"
    )
    print(f"| the S3 server receiving it (its own processes) | | {server:.1f} | | {server:.1f} | |")
    result, rss = run_child(["--child", "stage", str(db), "order-by"])
    print(
        f"| instead of sub-windows: one DuckDB `ORDER BY created_at, id` "
        f"(memory_limit {ORDER_BY_MEMORY}, spilling) → polars | {result['wall']:.1f} | "
        f"{result['cpu']:.1f} | {result['cpu'] / result['wall']:.2f} | | {rss:.0f} |"
    )
    floor = (cpu + server) / (os.cpu_count() or 1)
    print(
        f"CPU of the whole delivery, server included: {cpu + server:.1f} s; on "
        f"{os.cpu_count()} cores no schedule can finish it in less than {floor:.1f} s."
    )
    print_threads(ours)


def print_threads(result: dict[str, Any]) -> None:
    """The asset path's process, whole (Dagster's run included): CPU by thread, RSS over time."""
    threads = sorted(result["threads"].items(), key=lambda item: -item[1])
    total = sum(seconds for _, seconds in threads)
    print("\n| thread (the asset path's process) | CPU s | share |\n|---|---|---|")
    for name, seconds in threads:
        if seconds >= 0.05:
            print(f"| {name} | {seconds:.1f} | {seconds / total:.0%} |")
    samples = result["rss_over_time"]
    step = max(1, len(samples) // 12)
    print(
        "RSS over time (s: MB): "
        + ", ".join(f"{at:.0f}: {mb:.0f}" for at, mb in samples[::step])
        + f"; peak {max(mb for _, mb in samples):.0f}"
    )


PARQUET_DAYS = 7


def child_parquet_read(dataset: str, files: str, partition: str) -> None:
    """Read one 15-minute window out of the Parquet dataset, as the loader does (sorted, into
    polars), from the window's own day's files or from every file of the dataset."""
    import duckdb
    import polars as pl

    from affise_s3_assets.source.event_types import row_order, window_query
    from affise_s3_assets.source.parquet_source import parquet_files

    start = datetime.strptime(partition, "%Y-%m-%d-%H:%M")
    end = start + timedelta(minutes=15)
    if files == "pruned":
        paths = parquet_files(Path(dataset), "clicks", start, end)
    else:
        paths = sorted(str(path) for path in Path(dataset, "clicks").glob("*/*.parquet"))
    relation = "read_parquet([" + ", ".join(f"'{path}'" for path in paths) + "])"
    started = time.perf_counter()
    with duckdb.connect() as con:
        con.execute("SET memory_limit = '256MB'")
        con.execute("SET threads = 1")
        frame = pl.DataFrame(con.sql(window_query("clicks", relation), params=[start, end]))
        rows = frame.sort(row_order("clicks")).height
    emit({"wall": time.perf_counter() - started, "rows": rows, "files": len(paths)})


def parquet_case(rows: int) -> None:
    import duckdb

    db = events_db(rows, DAY, DAY + timedelta(days=1), "export")
    # A week of days, each the benchmark day's rows moved back by whole days, so a window's
    # own day is one file among PARQUET_DAYS.
    # In time order, as a loader appends: a window's rows are in few row groups.
    dataset = OUT / f"parquet-{rows}-{PARQUET_DAYS}days-sorted"
    if not dataset.exists():
        scratch = dataset.with_suffix(".tmp")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        with duckdb.connect(str(db), read_only=True) as con:
            for back in range(PARQUET_DAYS):
                con.execute(
                    f"COPY (SELECT * REPLACE (created_at - INTERVAL {back} DAY AS created_at), "
                    f"strftime(created_at - INTERVAL {back} DAY, '%Y-%m-%d') AS date "
                    f"FROM clicks ORDER BY created_at) TO '{scratch / 'clicks'}' "
                    "(FORMAT parquet, PARTITION_BY (date), APPEND)"
                )
        from affise_s3_assets.source.completeness import write_dataset_watermark

        write_dataset_watermark(scratch, "clicks", DAY + timedelta(days=1))
        (scratch / "_watermarks.json.lock").unlink()
        scratch.rename(dataset)
    quarter = DAY + timedelta(hours=10, minutes=15)
    partition = quarter.strftime("%Y-%m-%d-%H:%M")
    print(
        "\n## Source: the 15-minute window from a DuckDB file and from a Parquet dataset "
        f"({PARQUET_DAYS} days, one directory per day)"
    )
    for label, source in (("DuckDB file", db), ("Parquet dataset, asset path", dataset)):
        result, rss = run_child(
            ["--child", "export", str(source), "15", partition],
            {"BENCH_AWS_ACCESS_KEY_ID": KEY, "BENCH_AWS_SECRET_ACCESS_KEY": SECRET},
        )
        print(f"- {label}: {result['rows']:,} rows, {result['wall']:.2f} s, peak RSS {rss:.0f} MB")
    s3_dataset_case(dataset, quarter)
    for files, label in (("pruned", "the window's day only (the loader)"), ("all", "every file")):
        result, rss = run_child(["--child", "parquet-read", str(dataset), files, partition])
        print(
            f"- reading the window from {label}: {result['files']} file(s), "
            f"{result['rows']:,} rows, {result['wall']:.2f} s, peak RSS {rss:.0f} MB"
        )


LAKE = "affise-bench-lake"


def s3_dataset_case(dataset: Path, quarter: datetime) -> None:
    """The dataset on local disk and uploaded to the S3 server, read in place: the one-day
    and the 15-minute window through the asset path, alternately, and what the server
    answered for each (its ops log: requests, bytes sent)."""
    client = s3_client()
    if LAKE not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=LAKE)
        for file in [*sorted(dataset.rglob("*.parquet")), dataset / "_watermarks.json"]:
            client.upload_file(str(file), LAKE, f"lake/{file.relative_to(dataset)}")
    objects = sum(1 for _ in dataset.rglob("*.parquet"))
    deployment = {
        "BENCH_AWS_ACCESS_KEY_ID": KEY,
        "BENCH_AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AFFISE_EVENTS_S3_ENDPOINT": ENDPOINT,
        "AFFISE_EVENTS_S3_REGION": "us-east-1",
    }
    print(
        f"\n## Source: the dataset ({objects} day objects) on local disk and on the S3 server, "
        "read in place through the asset path (alternating; median of 3)"
    )
    day = DAY.replace(hour=0, minute=0)
    for frequency, window in ((1440, day), (15, quarter)):
        partition = window.strftime("%Y-%m-%d-%H:%M")
        figures: dict[str, list[tuple[float, float]]] = {"local": [], "s3": []}
        requests = ""
        for _ in range(3):
            for label, source in (("local", str(dataset)), ("s3", f"s3://{LAKE}/lake")):
                before = rgw_requests()
                result, rss = run_child(
                    ["--child", "export", source, str(frequency), partition], deployment
                )
                figures[label].append((result["wall"], rss))
                if label == "s3":
                    after = rgw_requests()
                    requests = rgw_delta(before, after)
        local, remote = (sorted(figures[k])[1] for k in ("local", "s3"))
        print(
            f"- {'one-day' if frequency == 1440 else '15-minute'} window: local dataset "
            f"{local[0]:.2f} s ({local[1]:.0f} MB), s3:// {remote[0]:.2f} s ({remote[1]:.0f} MB), "
            f"{remote[0] / local[0]:.2f}x; the S3 server answered {requests}"
        )


def rgw_requests() -> dict[str, int]:
    """The S3 server's counters per operation (requests, bytes sent), from its admin socket."""
    out = subprocess.run(
        ["bash", "scripts/s3-server.sh", "perf"],
        env={**os.environ, **S3_ENV},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    try:
        counters = json.loads(out).get("rgw", {})
    except ValueError:
        return {}
    return {k: int(v) for k, v in counters.items() if isinstance(v, int | float)}


def rgw_delta(before: dict[str, int], after: dict[str, int]) -> str:
    if not after:
        return "(no counters)"
    changed = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    wanted = ("get", "get_b", "list_buckets", "put")
    shown = [f"{k} {changed[k]:,}" for k in wanted if k in changed]
    return ", ".join(shown) or "nothing"


def write_integrations(count: int) -> Path:
    frequencies = [5, 15, 15, 15, 30, 60]
    lines = ["integrations:"]
    for i in range(count):
        # One affiliate each, so the clicks delivered across integrations add up to the
        # source's volume (see fanout_db); a few integrations share filters with another.
        affiliates = FIRST_AFFILIATE + (i if i % 10 else i + 1) % count
        lines.append(
            f"""  - name: customer_{i:05d}
    start: "{DAY:%Y-%m-%d %H:%M:%S}"
    clicks:
      frequency: {frequencies[i % len(frequencies)]}
      bucket: {BUCKET}
      region: us-east-1
      directory: c{i:05d}/clicks
      access_key: ${{CUSTOMER_{i:05d}_AWS_ACCESS_KEY_ID}}
      secret_key: ${{CUSTOMER_{i:05d}_AWS_SECRET_ACCESS_KEY}}
      endpoint_url: {ENDPOINT}
      affiliates: [{affiliates}]
    conversions:
      frequency: 60
      bucket: {BUCKET}
      region: us-east-1
      directory: c{i:05d}/conversions
      access_key: ${{CUSTOMER_{i:05d}_AWS_ACCESS_KEY_ID}}
      secret_key: ${{CUSTOMER_{i:05d}_AWS_SECRET_ACCESS_KEY}}
      endpoint_url: {ENDPOINT}"""
        )
    many = OUT / f"integrations-{count}.yaml"
    many.write_text("\n".join(lines) + "\n")
    return many


def tick_case(count: int) -> None:
    many = write_integrations(count)
    ticks, _ = run_child(["--child", "ticks", str(many)])
    print(
        f"- {count:,} integrations ({2 * count:,} exports): catch-up sensor tick, first "
        f"(empty cursor) {ticks['sensor_first_tick']:.2f} s ({ticks['first_tick_runs']} runs "
        f"requested), next {ticks['sensor_next_tick']:.2f} s, cursor "
        f"{ticks['cursor_kb']:.1f} KB (state stored apart: {ticks['state_kb']:.0f} KB); "
        f"config sensor tick {ticks['config_sensor_tick']:.2f} s; "
        f"every schedule on the hour {ticks['all_schedules_tick']:.2f} s in all "
        f"({ticks['all_schedules_runs']} runs); latest-window sensor, every export's judged "
        f"window delivered: first verdicts {ticks['latest_first_tick']:.2f} s in "
        f"{ticks['latest_first_ticks']} ticks, next "
        f"{ticks['latest_next_tick']:.2f} s, one judging every export "
        f"{ticks['latest_every_export_tick']:.2f} s"
    )


def scale_cases(count: int, windows: int) -> None:
    import duckdb

    many = write_integrations(count)
    print(f"\n## {count:,} integrations x 2 event types ({many.relative_to(ROOT)})")
    loaded, _ = run_child(["--child", "import", str(many)])
    print(
        f"- definitions import: {loaded['import']:.2f} s (+ {loaded['resolve']:.2f} s to build "
        f"and resolve the repository): {loaded['assets']:,} assets, "
        f"{loaded['schedules']:,} schedules, {loaded['jobs']} jobs"
    )
    started = time.perf_counter()
    validate = subprocess.run(
        [PYTHON, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        env={**os.environ, "AFFISE_INTEGRATIONS": str(many)},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    passed = "All code locations passed validation" in validate.stdout + validate.stderr
    print(
        f"- `dagster definitions validate`: {'passed' if passed else 'FAILED'} "
        f"in {time.perf_counter() - started:.1f} s"
    )
    print("\n## Sensor and schedule ticks (in process, no gRPC)")
    for n in (count, 10 * count):
        tick_case(n)

    # Delivery: every integration's clicks at 15 minutes, 20M clicks/day in total.
    fifteen, db, env = fifteen_minute_fanout(count)
    print(
        f"\n## Window jobs: {count:,} integrations' clicks every 15 minutes, "
        "20M clicks/day in total"
    )
    print(
        "| window | rows in window | objects | run wall s | lag after close s (process start "
        "to exit, definitions loaded) | peak RSS MB |\n"
        "|---|---|---|---|---|---|"
    )
    for n in range(windows):
        start = DAY + timedelta(hours=10, minutes=15 * n)
        partition = start.strftime("%Y-%m-%d-%H:%M")
        result, rss = run_child(["--child", "window", str(fifteen), str(db), partition], env)
        with duckdb.connect(str(db), read_only=True) as con:
            (in_window,) = con.execute(
                "SELECT count(*) FROM clicks WHERE created_at >= ? AND created_at < ?",
                [start, start + timedelta(minutes=15)],
            ).fetchone()
        print(
            f"| {partition} | {in_window:,} | {result['objects']:,} | "
            f"{result['wall']:.1f} | {result['process_wall']:.1f} | {rss:.0f} |"
        )


PG_DIR = Path("/tmp/affise-bench-postgres")
PG_PORT = 5439


def start_postgres() -> str:
    """A throwaway Postgres cluster on loopback (Debian's postgresql); returns its URL."""
    stop_postgres()
    shutil.rmtree(PG_DIR, ignore_errors=True)
    PG_DIR.mkdir(parents=True)
    # initdb refuses to run as root.
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if prefix:
        shutil.chown(PG_DIR, "postgres")
    quiet = {"stdout": subprocess.DEVNULL, "check": True}
    subprocess.run([*prefix, "initdb", "-D", str(PG_DIR), "-A", "trust", "-U", "bench"], **quiet)
    options = f"-p {PG_PORT} -k {PG_DIR} -c listen_addresses=127.0.0.1 -c fsync=on"
    log = str(PG_DIR / "log")
    subprocess.run(
        [*prefix, "pg_ctl", "-D", str(PG_DIR), "-o", options, "-l", log, "-w", "start"], **quiet
    )
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; dagster-postgres ships psycopg2.
    return f"postgresql+psycopg2://bench@127.0.0.1:{PG_PORT}/postgres"


def stop_postgres() -> None:
    if not (PG_DIR / "postmaster.pid").exists():
        return
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        [*prefix, "pg_ctl", "-D", str(PG_DIR), "-m", "fast", "stop"],
        stdout=subprocess.DEVNULL,
        check=False,
    )


def fifteen_minute_fanout(count: int) -> tuple[Path, Path, dict[str, str]]:
    """`count` integrations' clicks every 15 minutes (one affiliate each), their events (20M
    clicks/day in total) and their credentials' variables."""
    many = write_integrations(count)
    fifteen = OUT / f"integrations-{count}-15min.yaml"
    fifteen.write_text(re.sub(r"frequency: (5|30)\n", "frequency: 15\n", many.read_text()))
    env = {f"CUSTOMER_{i:05d}_AWS_ACCESS_KEY_ID": KEY for i in range(count)} | {
        f"CUSTOMER_{i:05d}_AWS_SECRET_ACCESS_KEY": SECRET for i in range(count)
    }
    return fifteen, fanout_db(count), env


def shard_case(count: int) -> None:
    """A 15-minute window of `count` integrations' clicks delivered by 1, 2 and 4 runs at once
    (the schedule's shards, automation/shards.py), each its own process on one Postgres event log,
    as the run launcher starts them: from the first run's start to the last run's end (the window's
    close to its last object, less the queue's latency), and what an integration costs."""
    fifteen, db, env = fifteen_minute_fanout(count)
    print(
        f"\n## A window's runs side by side: {count:,} integrations' clicks, 15 minutes, Postgres"
    )
    print(
        "| runs at once | objects | first start → last end s | ms per integration | peak RSS MB |"
    )
    print("|---|---|---|---|---|")
    url = start_postgres()
    try:
        for n, runs in enumerate((1, 2, 4)):
            start = DAY + timedelta(hours=10, minutes=15 * n)
            partition = start.strftime("%Y-%m-%d-%H:%M")
            began = time.perf_counter()
            children = [
                subprocess.Popen(
                    [PYTHON, __file__, "--child", "window", str(fifteen), str(db), partition],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env={
                        **os.environ,
                        **env,
                        "BENCH_POSTGRES_URL": url,
                        "BENCH_SHARD": f"{index}/{runs}",
                    },
                    cwd=ROOT,
                    text=True,
                )
                for index in range(1, runs + 1)
            ]
            results = []
            for child in children:
                out, err = child.communicate()
                if child.returncode != 0:
                    raise SystemExit(f"shard run failed:\n{err[-4000:]}")
                results.append(json.loads(out.strip().splitlines()[-1]))
            wall = time.perf_counter() - began
            objects = sum(r["objects"] for r in results)
            rss = max(r["peak_rss_mb"] for r in results)
            print(f"| {runs} | {objects:,} | {wall:.1f} | {1000 * wall / count:.1f} | {rss:.0f} |")
    finally:
        stop_postgres()


# The production deployment of scripts/prod-local.sh, on ports and a Postgres of its own.
DEPLOY_PG_PORT = 5441
DEPLOY_WEB_PORT = 3420
COMPUTE_LOGS_BUCKET = "affise-bench-compute-logs"
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


def live_events(count: int, now: datetime) -> Path:
    """20M clicks/day around `now` (an hour before to three after, complete to the end), spread
    over `count` affiliates as fanout_db does: what a running deployment's windows read."""
    hour = now.replace(minute=0, second=0, microsecond=0)
    source = events_db(20_000_000, hour - timedelta(hours=1), hour + timedelta(hours=3), "live")
    path = source.with_name(f"{source.stem}-{count}-affiliates.duckdb")
    if not path.exists():
        spread_over_affiliates(source, path, count)
    return path


def run_worker_rss_mb(home: Path) -> tuple[float, float]:
    """The largest run worker's RSS and all run workers' together, MB, from /proc: the code
    server of the deployment at `home` starts each run as a multiprocessing child."""
    sizes = []
    mark = f"AFFISE_PROD_HOME={home}\0".encode()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            cmdline = (status.parent / "cmdline").read_bytes()
            if b"spawn_main" not in cmdline and b"execute_run" not in cmdline:
                continue
            if mark not in (status.parent / "environ").read_bytes():
                continue
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return max(sizes, default=0.0), sum(sizes)


def deployment_case(count: int, settings: list[str], minutes: int = 15) -> None:
    """A 15-minute window (`minutes`) of `count` integrations' clicks delivered by the production
    deployment (scripts/prod-local.sh: Postgres, `dagster code-server start`, `dagster-daemon
    run`, `dagster-webserver`, deploy/dagster.yaml's queue and tag limits), from its close to
    its last object: the schedule's tick, the queue, each run worker's start and definitions,
    and the deliveries. One window per setting of AFFISE_EXPORTS_PER_RUN (`default` is the
    shipped one), each the next the clock closes; the code server is restarted between them."""
    events = live_events(count, datetime.now(UTC).replace(tzinfo=None))
    now = datetime.now(UTC).replace(tzinfo=None)
    # The first window measured closes no sooner than the code location can have loaded.
    first = now.replace(minute=now.minute - now.minute % minutes, second=0, microsecond=0)
    if first + timedelta(minutes=minutes) - now < timedelta(seconds=60 + count * 0.03):
        first += timedelta(minutes=minutes)
    lines = ["lateness:\n  clicks: 0", "integrations:"]
    for i in range(count):
        lines.append(
            f"""  - name: customer_{i:05d}
    start: "{first:%Y-%m-%d %H:%M:%S}"
    clicks:
      frequency: {minutes}
      bucket: {BUCKET}
      region: us-east-1
      directory: live/c{i:05d}/clicks
      access_key: ${{CUSTOMER_{i:05d}_AWS_ACCESS_KEY_ID}}
      secret_key: ${{CUSTOMER_{i:05d}_AWS_SECRET_ACCESS_KEY}}
      endpoint_url: {ENDPOINT}
      affiliates: [{FIRST_AFFILIATE + i}]"""
        )
    integrations = OUT / f"integrations-{count}-live.yaml"
    integrations.write_text("\n".join(lines) + "\n")
    home = OUT / f"prod-{count}"
    shutil.rmtree(home, ignore_errors=True)
    pg_dir = Path(f"/tmp/affise-bench-prod-pg-{DEPLOY_PG_PORT}")
    shutil.rmtree(pg_dir, ignore_errors=True)
    pg_dir.mkdir(mode=0o755)
    s3_client().create_bucket(Bucket=COMPUTE_LOGS_BUCKET)
    pg = {
        "DAGSTER_PG_USERNAME": "dagster",
        "DAGSTER_PG_PASSWORD": "bench-deployment",
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(DEPLOY_PG_PORT),
        "DAGSTER_PG_DB": "dagster",
    }
    base = {
        **{
            k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DAGSTER_", "AFFISE_"))
        },
        **pg,
        "AFFISE_PROD_HOME": str(home),
        "AFFISE_PROD_PG_DIR": str(pg_dir / "pg"),
        "AFFISE_PROD_WEBSERVER_PORT": str(DEPLOY_WEB_PORT),
        "AFFISE_PROD_CODE_SERVER_PORT": str(DEPLOY_WEB_PORT + 1),
        "AFFISE_PROD_START_TIMEOUT": "900",
        "AFFISE_PROD_STOP_TIMEOUT": "600",
        "AFFISE_INTEGRATIONS": str(integrations),
        "AFFISE_EVENTS_DB": str(events),
        "AFFISE_STATE_DIR": str(home / "state"),
        "AFFISE_COMPUTE_LOGS_BUCKET": COMPUTE_LOGS_BUCKET,
        # The deployment's own chain: its run logs go to the same server.
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL_S3": ENDPOINT,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        **{f"CUSTOMER_{i:05d}_AWS_ACCESS_KEY_ID": KEY for i in range(count)},
        **{f"CUSTOMER_{i:05d}_AWS_SECRET_ACCESS_KEY": SECRET for i in range(count)},
    }

    def script(*args: str, exports_per_run: str = "default") -> None:
        env = dict(base)
        if exports_per_run != "default":
            env["AFFISE_EXPORTS_PER_RUN"] = exports_per_run
        done = subprocess.run(
            ["bash", "scripts/prod-local.sh", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"prod-local.sh {' '.join(args)}:\n{done.stdout}{done.stderr}")

    print(
        f"\n## The production deployment (scripts/prod-local.sh, Postgres): {count:,} "
        f"integrations' {minutes}-minute clicks window, from its close"
    )
    print(
        "| exports per run | runs | close → first run started s | close → last object s | "
        "objects | largest run worker MB | run workers together MB |"
    )
    print("|---|---|---|---|---|---|---|")
    # This process reads the deployment's instance (its dagster.yaml's env references).
    os.environ.update({k: v for k, v in base.items() if k in pg or not k.startswith("CUSTOMER_")})
    loaded = time.perf_counter()
    try:
        script("start", exports_per_run=settings[0])
        print(f"(deployment started, code location loaded: {time.perf_counter() - loaded:.0f} s)")
        window = first
        close = first + timedelta(minutes=minutes)
        for n, setting in enumerate(settings):
            if n:
                script("restart", "code-server", exports_per_run=setting)
                # The next window that closes once the code is loaded again.
                window = close
                while datetime.now(UTC).replace(tzinfo=None) > window + timedelta(
                    minutes=minutes, seconds=-20
                ):
                    window += timedelta(minutes=minutes)
            close = window + timedelta(minutes=minutes)
            if datetime.now(UTC).replace(tzinfo=None) > close - timedelta(seconds=20):
                raise SystemExit(f"the code location loaded after {close}: no clean window")
            figures = deployment_window(home, window, close, count)
            print(f"| {setting} | " + " | ".join(figures) + " |")
    finally:
        script("stop")


def deployment_window(home: Path, window: datetime, close: datetime, count: int) -> list[str]:
    """Waits for `window` to close and its runs to finish; its figures."""
    import dagster as dg

    from affise_s3_assets.automation.runs import PARTITION_TAG, SHARD_TAG

    partition = window.strftime("%Y-%m-%d-%H:%M")
    largest = together = 0.0
    deadline = close + timedelta(minutes=30)
    os.environ["DAGSTER_HOME"] = str(home / "dagster_home")
    with dg.DagsterInstance.get() as instance:
        while True:
            utcnow = datetime.now(UTC).replace(tzinfo=None)
            if utcnow > deadline:
                raise SystemExit(f"window {partition}: not delivered by {deadline}")
            biggest, total = run_worker_rss_mb(home)
            largest, together = max(largest, biggest), max(together, total)
            records = instance.get_run_records(dg.RunsFilter(tags={PARTITION_TAG: partition}))
            # A window's runs are created one after another: all n of "i/n" must exist.
            shards = {r.dagster_run.tags.get(SHARD_TAG, "1/1") for r in records}
            expected = max((int(shard.split("/")[1]) for shard in shards), default=0)
            done = all(r.dagster_run.status.value in FINISHED for r in records)
            if records and len(records) >= expected and done:
                break
            time.sleep(1)
        stamps = [
            entry.timestamp
            for record in records
            for entry in instance.all_logs(
                record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
            )
        ]
        starts = [r.start_time for r in records if r.start_time]
    closed = close.replace(tzinfo=UTC).timestamp()
    failed = [r for r in records if r.dagster_run.status.value != "SUCCESS"]
    note = f" ({len(failed)} runs failed)" if failed else ""
    return [
        f"{len(records)}{note}",
        f"{min(starts) - closed:.1f}" if starts else "n/a",
        f"{max(stamps) - closed:.1f}" if stamps else "n/a",
        f"{len(stamps):,} of {count:,}",
        f"{largest:.0f}",
        f"{together:.0f}",
    ]


# The headline figures, and the last recorded ones they are compared with (--record writes
# them). All are "lower is better"; one more than REGRESSION_MARGIN worse prints REGRESSION.
FIGURES = ROOT / "benchmarks" / "figures.json"
REGRESSION_MARGIN = 0.10
PER_INTEGRATION_COUNTS = (100, 1000)


def export_figures(rows: int) -> dict[str, dict[str, Any]]:
    """The one-day and a 15-minute window through the export step, each beside DuckDB's COPY
    of the same window in the same run, and the one-day window as Parquet. The 15-minute
    window, about a second, is the best of three runs (and the largest of their peaks): one
    run moved by a third with the machine's other work. The day's is one run: three would keep
    three 620 MB objects in the S3 server's memory at once, beside the parent's check of the
    object."""
    db = events_db(rows, DAY, DAY + timedelta(days=1), "export")
    quarter = DAY + timedelta(hours=10, minutes=15)
    figures: dict[str, dict[str, Any]] = {}
    for name, label, frequency, start, end in (
        ("day", f"one-day window, {rows / 1e6:g}M rows", 1440, DAY, DAY + timedelta(days=1)),
        ("quarter", "15-minute window", 15, quarter, quarter + timedelta(minutes=15)),
    ):
        partition = start.strftime("%Y-%m-%d-%H:%M")
        runs = [
            run_child(
                ["--child", "export", str(db), str(frequency), partition],
                {"BENCH_AWS_ACCESS_KEY_ID": KEY, "BENCH_AWS_SECRET_ACCESS_KEY": SECRET},
            )
            for _ in range(1 if name == "day" else 3)
        ]
        ours, _ = min(runs, key=lambda run: run[0]["wall"])
        rss = max(peak for _, peak in runs)
        target = OUT / f"duckdb-copy-{frequency}.csv.gz"
        bounds = [f"{start:%Y-%m-%d %H:%M:%S}", f"{end:%Y-%m-%d %H:%M:%S}"]
        copy, _ = run_child(["--child", "copy", str(db), *bounds, str(target)])
        target.unlink()
        key = str(ours["s3_uri"]).removeprefix(f"s3://{BUCKET}/")
        print(f"verify {label}: {verify(db, key, start, end, ours['rows'])}")
        s3_client().delete_object(Bucket=BUCKET, Key=key)
        figures[f"{name}_window_s"] = {"what": f"{label}: wall s", "value": ours["wall"]}
        figures[f"{name}_window_vs_copy"] = {
            "what": f"{label}: ÷ DuckDB COPY gzip in the same run ({copy['wall']:.1f} s)",
            "value": ours["wall"] / copy["wall"],
        }
        figures[f"{name}_window_rss_mb"] = {"what": f"{label}: peak RSS MB", "value": rss}
        figures[f"{name}_window_object_mb"] = {
            "what": f"{label}: object MB ({ours['rows']:,} rows)",
            "value": ours["object_bytes"] / 1e6,
        }
    # The day window again as Parquet: its own RSS (polars' writer and one row group).
    label = f"one-day window, {rows / 1e6:g}M rows, as Parquet"
    parquet, rss = run_child(
        ["--child", "export", str(db), "1440", DAY.strftime("%Y-%m-%d-%H:%M")],
        {
            "BENCH_AWS_ACCESS_KEY_ID": KEY,
            "BENCH_AWS_SECRET_ACCESS_KEY": SECRET,
            "BENCH_FORMAT": "parquet",
        },
    )
    key = str(parquet["s3_uri"]).removeprefix(f"s3://{BUCKET}/")
    print(f"verify {label}: {verify_parquet(key, parquet['rows'])}")
    s3_client().delete_object(Bucket=BUCKET, Key=key)
    figures["day_parquet_s"] = {"what": f"{label}: wall s", "value": parquet["wall"]}
    figures["day_parquet_rss_mb"] = {"what": f"{label}: peak RSS MB", "value": rss}
    figures["day_parquet_object_mb"] = {
        "what": f"{label}: object MB ({parquet['rows']:,} rows)",
        "value": parquet["object_bytes"] / 1e6,
    }
    return figures


def per_integration_figures() -> dict[str, dict[str, Any]]:
    """What an integration costs a 15-minute window run (the whole run, from its creation with
    its planned events to its last materialization, over the objects delivered), at 100 and
    1,000 integrations, with the event log on SQLite (`dagster dev`'s) and on Postgres through
    deploy/dagster.yaml's storages. The best of three consecutive windows on one instance: the
    machine's other work moves one run by up to a fifth, and the best is the code's own cost."""
    figures: dict[str, dict[str, Any]] = {}
    url = start_postgres()
    try:
        for count in PER_INTEGRATION_COUNTS:
            fifteen, db, env = fifteen_minute_fanout(count)
            home = OUT / f"dev-home-{count}"
            shutil.rmtree(home, ignore_errors=True)
            for storage, extra in (
                ("sqlite", {"BENCH_SQLITE_HOME": str(home)}),
                ("postgres", {"BENCH_POSTGRES_URL": url}),
            ):
                # The first window warms the instance (its databases, its tables' first
                # rows), as a deployment's instance is: the best of the three counts.
                best, objects = float("inf"), 0
                for n in range(3):
                    start = DAY + timedelta(hours=10, minutes=15 * n)
                    args = ["--child", "window", str(fifteen), str(db), f"{start:%Y-%m-%d-%H:%M}"]
                    result, _ = run_child(args, env | extra)
                    if result["objects"] and result["wall"] < best:
                        best, objects = result["wall"], result["objects"]
                figures[f"per_integration_ms_{count}_{storage}"] = {
                    "what": f"15-minute window run, {objects:,} integrations' objects, "
                    f"{storage}: ms per integration ({best:.1f} s the run)",
                    "value": 1000 * best / objects,
                }
    finally:
        stop_postgres()
    return figures


def compare_figures(figures: dict[str, dict[str, Any]], last: dict[str, Any]) -> list[str]:
    """A line per figure against the last recorded one; REGRESSION when more than
    REGRESSION_MARGIN worse."""
    lines = []
    recorded = last.get("figures", {})
    for name, figure in figures.items():
        value = figure["value"]
        before = recorded.get(name, {}).get("value")
        at = recorded.get(name, {}).get("code", last.get("code", "?"))
        if before is None:
            lines.append(f"new        {name}: {value:.2f} (no recorded figure)")
            continue
        change = value / before - 1 if before else 0.0
        verdict = "REGRESSION" if change > REGRESSION_MARGIN else "ok        "
        lines.append(
            f"{verdict} {name}: {value:.2f} against {before:.2f} recorded at {at} ({change:+.0%})"
        )
    return lines


def recorded_figures(
    figures: dict[str, dict[str, Any]], last: dict[str, Any], code: str
) -> dict[str, Any]:
    """What `--record` writes: each figure of this run (measured at `code`), but one worse
    than the recorded figure keeps the recorded one, with the commit it was measured at. A
    slower run (the machine's other work, or the code) never becomes the figure later runs
    are compared with; every figure is lower-is-better."""
    kept = last.get("figures", {})
    chosen = {}
    for name, figure in figures.items():
        new = {**figure, "value": round(figure["value"], 2), "code": code}
        before = kept.get(name)
        if before is not None and before["value"] < new["value"]:
            new = {"code": last.get("code", "?")} | before
        chosen[name] = new
    return {
        "code": code,
        "command": "benchmarks/run_benchmarks.py --only headline --record",
        "figures": chosen,
    }


def render_table(recorded: dict[str, Any]) -> str:
    """benchmarks/README.md's table of the recorded figures."""
    rows = ["| figure | value | measured at |", "| --- | --- | --- |"]
    for figure in recorded["figures"].values():
        at = figure.get("code", recorded["code"])
        rows.append(f"| {figure['what']} | {figure['value']:.2f} | {at} |")
    return "\n".join(rows) + "\n"


def headline_case(rows: int, record: bool) -> None:
    figures = export_figures(rows) | per_integration_figures()
    last = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    print("\n## Headline figures against the last recorded (benchmarks/figures.json)")
    for line in compare_figures(figures, last):
        print(line)
    if record:
        code = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        recorded = recorded_figures(figures, last, code)
        FIGURES.write_text(json.dumps(recorded, indent=2, ensure_ascii=False) + "\n")
        print(f"recorded in {FIGURES.relative_to(ROOT)}; benchmarks/README.md's table:\n")
        print(render_table(recorded))


def slow_destination_case(count: int = 50) -> None:
    """One integration's endpoint accepts and never answers, among `count` in one window job:
    when the others' objects land, against the same run with no dead endpoint."""
    sys.path.insert(0, str(ROOT))
    from tests.stalling_endpoint import stalling_endpoint

    base = write_integrations(count).read_text()
    fifteen = re.sub(r"frequency: (5|30)\n", "frequency: 15\n", base)
    db = fanout_db(1000)
    env = {f"CUSTOMER_{i:05d}_AWS_ACCESS_KEY_ID": KEY for i in range(count)} | {
        f"CUSTOMER_{i:05d}_AWS_SECRET_ACCESS_KEY": SECRET for i in range(count)
    }
    partition = (DAY + timedelta(hours=10)).strftime("%Y-%m-%d-%H:%M")
    print(f"\n## A destination that never answers, among {count} integrations (one window)")
    print("| case | objects | last healthy object after run start s | run wall s |")
    print("|---|---|---|---|")
    with stalling_endpoint() as dead:
        first = "directory: c00000/clicks\n      access_key: ${CUSTOMER_00000_AWS_ACCESS_KEY_ID}\n"
        first += "      secret_key: ${CUSTOMER_00000_AWS_SECRET_ACCESS_KEY}\n"
        one_dead = fifteen.replace(
            first + f"      endpoint_url: {ENDPOINT}", first + f"      endpoint_url: {dead}", 1
        )
        assert one_dead != fifteen
        for name, text in (("all healthy", fifteen), ("one never answers", one_dead)):
            path = OUT / f"integrations-{count}-{name.replace(' ', '-')}.yaml"
            path.write_text(text)
            args = ["--child", "window", str(path), str(db), partition]
            result, _ = run_child(args, env | {"BENCH_MAY_FAIL": "1"})
            print(
                f"| {name} | {result['objects']} | {result['last_object_s']:.1f} | "
                f"{result['wall']:.1f} |"
            )


def backlog_case() -> None:
    """A new integration with 30 days of history at 15 minutes, 20k clicks a day: the runs the
    catch-up sensor plans, each run as its own process (as a run worker), two at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from affise_s3_assets.automation.catch_up import plan_catch_up
    from affise_s3_assets.config.apply import parse_integrations
    from affise_s3_assets.config.targets import build_export_targets, build_window_groups

    end = DAY + timedelta(days=1)
    start = end - timedelta(days=30)
    db = events_db(20_000, start, end, "backlog")
    text = f"""integrations:
  - name: newco
    start: "{start:%Y-%m-%d %H:%M:%S}"
    clicks:
      frequency: 15
      bucket: {BUCKET}
      region: us-east-1
      directory: backlog/clicks
      access_key: ${{NEWCO_AWS_ACCESS_KEY_ID}}
      secret_key: ${{NEWCO_AWS_SECRET_ACCESS_KEY}}
      endpoint_url: {ENDPOINT}
"""
    path = OUT / "integrations-backlog.yaml"
    path.write_text(text)
    groups = build_window_groups(build_export_targets(parse_integrations(text).integrations))
    requests, progress = [], {}
    for _ in range(1000):
        planned, progress = plan_catch_up(groups, progress, end + timedelta(minutes=5))
        if not planned:
            break
        requests += planned
    env = {"NEWCO_AWS_ACCESS_KEY_ID": KEY, "NEWCO_AWS_SECRET_ACCESS_KEY": SECRET}

    def one(request: Any) -> float:
        first = request.tags.get("dagster/asset_partition_range_start") or request.partition_key
        last = request.tags.get("dagster/asset_partition_range_end", "")
        result, _ = run_child(["--child", "window", str(path), str(db), first, last], env)
        return result["process_wall"]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        walls = list(pool.map(one, requests))
    total = time.perf_counter() - started
    client = s3_client()
    objects = sum(
        page.get("KeyCount", 0)
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix="backlog/clicks/"
        )
    )
    print("\n## Backlog: one new integration, 30 days of 15-minute windows, 20k clicks a day")
    print(
        f"- {len(requests)} runs planned by the catch-up sensor for {objects:,} objects "
        f"(2,880 windows); {total:.0f} s wall, two runs at a time, each run "
        f"{min(walls):.1f}-{max(walls):.1f} s as its own process"
    )


def lag_case(minutes: int) -> None:
    """The real `dagster dev` with a new integration's 30 days of backlog at 15 minutes and a
    1-minute integration: how long after each fresh window closes its object lands."""
    import statistics

    sys.path.insert(0, str(ROOT))
    from affise_s3_assets.demo.events import generate_demo_events
    from tests.operations import DagsterDev

    now = datetime.now(UTC).replace(tzinfo=None, second=0, microsecond=0)
    home = OUT / "lag"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    db = home / "events.duckdb"
    generate_demo_events(db, now - timedelta(days=30), now + timedelta(hours=2), 20_000, 5)
    client = s3_client()
    for bucket in ("lag-backlog", "lag-fresh"):
        client.create_bucket(Bucket=bucket)

    def block(name: str, start: datetime, frequency: int) -> str:
        return f"""  - name: {name}
    start: "{start:%Y-%m-%d %H:%M:%S}"
    clicks:
      frequency: {frequency}
      bucket: lag-{name}
      region: us-east-1
      directory: clicks
      access_key: ${{{name.upper()}_AWS_ACCESS_KEY_ID}}
      secret_key: ${{{name.upper()}_AWS_SECRET_ACCESS_KEY}}
      endpoint_url: {ENDPOINT}
"""

    integrations = home / "integrations.yaml"
    integrations.write_text(
        "integrations:\n"
        + block("backlog", (now - timedelta(days=30)).replace(hour=0, minute=0), 15)
        + block("fresh", now, 1)
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DAGSTER_"))},
        "AFFISE_INTEGRATIONS": str(integrations),
        "AFFISE_EVENTS_DB": str(db),
        "AFFISE_STATE_DIR": str(home / "state"),
        **{
            f"{name}_AWS_{part}": value
            for name in ("BACKLOG", "FRESH")
            for part, value in (("ACCESS_KEY_ID", KEY), ("SECRET_ACCESS_KEY", SECRET))
        },
    }
    dev = DagsterDev(home / "dagster_home", env, 3198)
    lags: dict[str, float] = {}
    started = time.monotonic()
    dev.start()
    try:
        while time.monotonic() - started < minutes * 60:
            time.sleep(5)
            listing = client.list_objects_v2(Bucket="lag-fresh").get("Contents", [])
            for item in listing:
                window = datetime.strptime(item["Key"][-26:-7], "%Y-%m-%d %H:%M:%S")
                closed = window + timedelta(minutes=1)
                landed = item["LastModified"].replace(tzinfo=None)
                lags.setdefault(item["Key"], (landed - closed).total_seconds())
        backlog = sum(
            page.get("KeyCount", 0)
            for page in client.get_paginator("list_objects_v2").paginate(Bucket="lag-backlog")
        )
    finally:
        dev.stop()
    values = sorted(lags.values())
    p95 = values[max(0, round(0.95 * len(values)) - 1)] if values else float("nan")
    print(f"\n## Fresh windows under a backlog (real dagster dev, {minutes} minutes)")
    print(
        f"- {len(values)} fresh 1-minute windows: object after close p50 "
        f"{statistics.median(values):.0f} s, p95 {p95:.0f} s, max {values[-1]:.0f} s; "
        f"meanwhile {backlog:,} of the backlog integration's objects landed (30 days and "
        "today's closed windows: ~2,900)"
    )


def reconcile_case(rows: int) -> None:
    """Fingerprints of the one-day table's 15-minute windows, as reconciliation reads them."""
    from affise_s3_assets.source.events import EventsDatabase

    day = datetime(2026, 11, 25)
    db = events_db(rows, day, day + timedelta(days=1), "export")
    source = EventsDatabase(path=str(db))
    print(f"\nreconciliation: fingerprints of {rows:,} rows (96 windows of 15 minutes)")
    print("| distinct filters | wall s | rows/s | (filter, window) results |")
    print("| --- | --- | --- | --- |")
    for count in (1, 10, 100, 1000):
        filters = [((), ())] + [((FIRST_AFFILIATE + i, i + 1), ()) for i in range(count - 1)]
        started = time.perf_counter()
        with source.read("clicks", day, day + timedelta(days=1)) as read:
            found = read.fingerprints(15, filters)
        wall = time.perf_counter() - started
        print(f"| {count:,} | {wall:.1f} | {rows / wall:,.0f} | {len(found):,} |")
    reconcile_records_case(db, 200)


def reconcile_records_case(db: Path, count: int) -> None:
    """A reconciliation pass over `count` integrations' 15-minute clicks of the one-day table,
    each window's delivery recorded (materializations written directly, as the deliveries
    would, in a SQLite instance like `dagster dev`'s): the first pass, which reads every
    window's records, and the next, which reads only what is not settled."""
    import dagster as dg

    from affise_s3_assets.automation.reconciliation import reconcile_group
    from affise_s3_assets.config.apply import parse_integrations
    from affise_s3_assets.config.schema import Reconciliation
    from affise_s3_assets.config.targets import build_export_targets, build_window_groups
    from affise_s3_assets.delivery.record import filters_metadata, window_metadata
    from affise_s3_assets.source.events import EventsDatabase

    text = "integrations:\n" + "".join(
        f"""  - name: customer_{i:05d}
    start: "2026-11-25 00:00:00"
    clicks:
      frequency: 15
      bucket: affise-bench
      region: us-east-1
      directory: c{i:05d}/clicks
      access_key: ${{CUSTOMER_{i:05d}_AWS_ACCESS_KEY_ID}}
      secret_key: ${{CUSTOMER_{i:05d}_AWS_SECRET_ACCESS_KEY}}
      endpoint_url: http://127.0.0.1:7482
      affiliates: [{101 + i % 8}]
"""
        for i in range(count)
    )
    now = datetime(2026, 11, 26, 1, tzinfo=UTC)
    parsed = parse_integrations(text, now=now.replace(tzinfo=None))
    (group,) = build_window_groups(build_export_targets(parsed.integrations))
    source = EventsDatabase(path=str(db))
    day = datetime(2026, 11, 25)
    with source.read("clicks", day, day + timedelta(days=1)) as read:
        current = read.fingerprints(15, sorted({t.filter_key for t in group.live}))
        empty = read.empty()
    with dg.instance_for_test() as instance:
        started = time.perf_counter()
        for target in group.live:
            for i in range(96):
                start = day + timedelta(minutes=15 * i)
                held = current.get((target.filter_key, start), empty)
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(
                        asset_key=target.asset_key,
                        partition=start.strftime("%Y-%m-%d-%H:%M"),
                        metadata={
                            **window_metadata(start, start + timedelta(minutes=15)),
                            **filters_metadata(target.affiliates, target.advertisers),
                            "rows": held.rows,
                            "source_fingerprint": held.text(),
                        },
                    )
                )
        print(
            f"\n{count} integrations x 96 windows recorded in "
            f"{time.perf_counter() - started:.0f} s; reconciliation passes over them:"
        )
        settled = None
        for name in ("first pass (nothing settled)", "next pass (settled)"):
            started = time.perf_counter()
            changed, _, settled, _ = reconcile_group(
                instance, source, group, Reconciliation(), now, None, settled
            )
            print(
                f"- {name}: {time.perf_counter() - started:.1f} s, {len(changed)} changed, "
                f"{sum(len(windows) for windows in settled.values())} windows settled"
            )


def main() -> None:
    # Every process measured gets the allocator settings the deployment starts its own with
    # (deploy/Dockerfile, scripts/dev.sh): the children, `dagster dev` and the shard runs.
    os.environ.setdefault("_RJEM_MALLOC_CONF", "narenas:1,tcache:false")
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind, *args = sys.argv[2:]
        handlers = {
            "export": lambda: child_export(args[0], int(args[1]), args[2]),
            "copy": lambda: child_duckdb_copy(*args),
            "stage": lambda: child_stage(*args),
            "parquet-read": lambda: child_parquet_read(*args),
            "import": lambda: child_import(args[0]),
            "ticks": lambda: child_ticks(args[0]),
            "window": lambda: child_window(*args),
        }
        handlers[kind]()
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000, help="clicks in the one-day table")
    parser.add_argument("--integrations", type=int, default=1000)
    parser.add_argument("--windows", type=int, default=4, help="15-minute windows delivered")
    parser.add_argument(
        "--only",
        choices=[
            "export",
            "profile",
            "parquet",
            "format",
            "scale",
            "slow",
            "backlog",
            "lag",
            "reconcile",
            "shards",
            "deployment",
            "headline",
        ],
        action="append",
    )
    parser.add_argument(
        "--record", action="store_true", help="write the headline figures to figures.json"
    )
    parser.add_argument(
        "--table",
        action="store_true",
        help="print benchmarks/README.md's table of figures.json and stop",
    )
    parser.add_argument("--lag-minutes", type=int, default=6)
    parser.add_argument(
        "--shard-integrations", type=int, nargs="+", default=[1000, 10_000], metavar="N"
    )
    parser.add_argument(
        "--deployment-integrations", type=int, nargs="+", default=[1000, 10_000], metavar="N"
    )
    parser.add_argument(
        "--deployment-exports-per-run",
        nargs="+",
        default=["default"],
        metavar="N",
        help="AFFISE_EXPORTS_PER_RUN for each window measured ('default': the shipped one)",
    )
    parser.add_argument("--deployment-minutes", type=int, default=15, choices=[1, 5, 15])
    options = parser.parse_args()
    if options.table:
        print(render_table(json.loads(FIGURES.read_text())), end="")
        return
    OUT.mkdir(parents=True, exist_ok=True)
    parts = options.only or ["headline"]
    start_s3()
    try:
        if "headline" in parts:
            headline_case(options.rows, options.record)
        if "export" in parts:
            export_cases(options.rows)
        if "profile" in parts:
            profile_cases(options.rows)
        if "parquet" in parts:
            parquet_case(options.rows)
        if "format" in parts:
            format_cases(options.rows)
        if "scale" in parts:
            scale_cases(options.integrations, options.windows)
        if "slow" in parts:
            slow_destination_case()
        if "backlog" in parts:
            backlog_case()
        if "lag" in parts:
            lag_case(options.lag_minutes)
        if "reconcile" in parts:
            reconcile_case(options.rows)
        if "shards" in parts:
            for count in options.shard_integrations:
                shard_case(count)
        if "deployment" in parts:
            for count in options.deployment_integrations:
                deployment_case(
                    count, options.deployment_exports_per_run, options.deployment_minutes
                )
    finally:
        stop_s3()


if __name__ == "__main__":
    main()
