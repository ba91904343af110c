"""The upload journal: an open multipart upload is recorded in the Dagster instance before its
first part, so that a process killed mid-upload leaves it where the next delivery of its key,
or a sweep, aborts it with s3:AbortMultipartUpload alone (no listing), against the real
server under the least-privilege policy."""

import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from affise_s3_assets.automation.upload_sweep import build_upload_sweep_sensor
from affise_s3_assets.config.targets import build_export_targets, build_window_groups
from affise_s3_assets.delivery.upload_journal import (
    PREFETCH_SECONDS,
    Holder,
    InstanceUploadJournal,
    JournalUnavailable,
    MemoryUploadJournal,
    OpenUpload,
)
from affise_s3_assets.delivery.writer import sweep_abandoned_uploads
from affise_s3_assets.s3 import MIB, Journaling, S3ObjectWriter
from tests.conftest import ROOT, S3Server
from tests.delivered import (
    KEY,
    deliver,
    export_asset,
    fetch,
    grant_only_delivery,
    integration,
    keys_in,
)
from tests.memory_stores import AnsweringStore, feed


@pytest.fixture
def instance(tmp_path: Path) -> Any:
    """A persistent instance (SQLite files), as another process opens it too."""
    home = tmp_path / "dagster"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        yield instance


def test_the_instance_journal_records_forgets_and_keeps_nothing_secret(instance: Any) -> None:
    journal = InstanceUploadJournal(instance, run_id="run-1")
    first = journal.record("acme/clicks", "http://s3", "bucket", "k1", "upload-1")
    journal.record("acme/clicks", "http://s3", "bucket", "k2", "upload-2")
    journal.record("other/clicks", "", "bucket", "k1", "upload-3")
    assert [u.upload_id for u in journal.pending("acme/clicks")] == ["upload-1", "upload-2"]
    assert first.holder == Holder.this_process("run-1")
    journal.forget(first)
    journal.forget(first)  # forgetting twice is no error
    assert [u.upload_id for u in journal.pending("acme/clicks")] == ["upload-2"]
    # Another journal on the same instance (another process) reads the same entries.
    again = InstanceUploadJournal(instance)
    assert [u.key for u in again.pending("other/clicks")] == ["k1"]
    stored = instance.run_storage.get_cursor_values({journal.storage_key("acme/clicks")})
    (text,) = stored.values()
    assert set(json.loads(text)["uploads"][0]) == {
        "destination",
        "endpoint",
        "bucket",
        "key",
        "upload_id",
        "recorded_at",
        "holder",
    }


def test_concurrent_writers_of_one_destination_lose_none_of_each_others_entries(
    instance: Any,
) -> None:
    """Two runs of one destination (each its own journal, as two processes have) record and
    forget at once: the key is swapped only if unchanged since read, so no entry is lost
    and none comes back."""
    journals = [InstanceUploadJournal(instance, run_id=f"run-{n}") for n in range(2)]
    errors: list[BaseException] = []

    def churn(journal: InstanceUploadJournal, name: str) -> None:
        try:
            for n in range(40):
                kept = journal.record("acme/clicks", "", "b", f"{name}-{n}", f"{name}-keep-{n}")
                gone = journal.record("acme/clicks", "", "b", f"{name}-{n}", f"{name}-gone-{n}")
                journal.forget(gone)
                assert kept.upload_id
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=churn, args=(journal, f"w{n}"))
        for n, journal in enumerate(journals)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    ids = {upload.upload_id for upload in journals[0].pending("acme/clicks")}
    assert ids == {f"w{w}-keep-{n}" for w in range(2) for n in range(40)}


def test_an_upload_is_abandoned_once_its_run_is_finished_or_its_process_gone(
    instance: Any,
) -> None:
    """Only then may anyone else abort it: a run still in progress on another host (or on
    this one, its process alive) is sending its parts."""
    journal = InstanceUploadJournal(instance)

    def run(status: DagsterRunStatus) -> str:
        run_id = str(uuid.uuid4())
        instance.add_run(DagsterRun(job_name="j", run_id=run_id, status=status))
        return run_id

    def entry(holder: Holder) -> OpenUpload:
        return OpenUpload("acme/clicks", "", "b", "k", "u", time.time(), holder)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here, elsewhere = Holder.this_process().host, "another-pod"
    assert journal.abandoned(entry(Holder(elsewhere, 7, run(DagsterRunStatus.FAILURE))))
    assert journal.abandoned(entry(Holder(elsewhere, 7, run(DagsterRunStatus.SUCCESS))))
    assert journal.abandoned(entry(Holder(elsewhere, 7, "a-run-the-instance-never-had")))
    assert journal.abandoned(entry(Holder(here, dead.pid, run(DagsterRunStatus.STARTED))))
    assert journal.abandoned(entry(Holder(here, dead.pid)))
    assert not journal.abandoned(entry(Holder(elsewhere, 7, run(DagsterRunStatus.STARTED))))
    assert not journal.abandoned(entry(Holder(here, os.getpid(), run(DagsterRunStatus.STARTED))))
    assert not journal.abandoned(entry(Holder(elsewhere, 7)))  # cannot tell: left to age
    # Same host name, another process-id namespace (containers on the host's network): its
    # pid says nothing here, even one no process of ours has.
    container = f"{socket.gethostname()}/{here.split('/', 1)[-1]}-other"
    assert not journal.abandoned(entry(Holder(container, dead.pid)))
    assert not journal.abandoned(entry(Holder(socket.gethostname(), dead.pid)))


def test_an_upload_the_journal_cannot_record_is_not_sent_and_is_aborted() -> None:
    """No part goes up unjournaled: a journal that fails fails the object (not permanently),
    and the upload just created is aborted."""

    class Broken(MemoryUploadJournal):
        def record(self, *args: Any) -> OpenUpload:
            raise JournalUnavailable("the upload journal could not record the upload")

    store = AnsweringStore()
    aborted: list[str] = []
    store.abort_multipart_upload = lambda UploadId, **_: aborted.append(UploadId) or {}  # type: ignore[method-assign]
    writer = S3ObjectWriter(
        store, "b", "k", part_size=5 * MIB, journaling=Journaling(Broken(), "acme/clicks")
    )
    with pytest.raises(JournalUnavailable):
        feed(writer, bytes(12 * MIB))
        writer.close()
    writer.abort().result(timeout=30)
    assert store.parts == {} and aborted == ["u1"]


# The process killed mid-upload: a delivery's writer, journaling in the instance at
# JOURNAL_HOME, sends one part of an object whose rest never comes, says so once the store
# has answered for it, and waits to be killed.
CHILD = textwrap.dedent(
    """
    import os, sys
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef
    from affise_s3_assets.s3 import MIB, Journaling, S3Destination, S3ObjectWriter, s3_client
    from affise_s3_assets.delivery.upload_journal import InstanceUploadJournal

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(os.environ["JOURNAL_HOME"]))
    env = os.environ
    destination = S3Destination(
        "acme", "clicks", env["BUCKET"], "us-west-2", "affise/raw",
        "${ACME_AWS_ACCESS_KEY_ID}", "${ACME_AWS_SECRET_ACCESS_KEY}", env["ENDPOINT"],
    )
    writer = S3ObjectWriter(
        s3_client(destination), env["BUCKET"], env["KEY"], part_size=5 * MIB,
        journaling=Journaling(
            InstanceUploadJournal(instance), destination.journal_name, env["ENDPOINT"]
        ),
    )
    writer.write(os.urandom(6 * MIB))
    writer._in_flight.result(timeout=120)
    print("part stored", flush=True)
    sys.stdin.read()
    """
)


def _kill_mid_upload(
    s3_server: S3Server, bucket: str, instance: Any, tmp_path: Path, env: dict[str, str]
) -> tuple[str, int]:
    """Run CHILD until its first part is stored, SIGKILL it; its upload id and pid."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script)],
        env={
            **os.environ,
            **env,
            "PYTHONPATH": str(ROOT),
            "JOURNAL_HOME": str(instance.root_directory),
            "BUCKET": bucket,
            "ENDPOINT": s3_server.endpoint_url,
            "KEY": KEY,
        },
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert child.stdout is not None
    try:
        ready, _, _ = select.select([child.stdout], [], [], 120)
        assert ready, "the writer's first part was not stored within 120 s"
        assert child.stdout.readline() == b"part stored\n", "the writer process failed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    uploads = s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    (upload_id,) = [u["UploadId"] for u in uploads if u["Key"] == KEY]
    return str(upload_id), child.pid


def delivery_only(
    s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """acme's keys: an account granted Put and Abort on `bucket` and no listing (the
    published least-privilege policy)."""
    grant_only_delivery(s3_server, bucket)
    limited = {
        "ACME_AWS_ACCESS_KEY_ID": s3_server.intruder.access_key,
        "ACME_AWS_SECRET_ACCESS_KEY": s3_server.intruder.secret_key,
    }
    for name, value in limited.items():
        monkeypatch.setenv(name, value)
    return limited


def test_a_writer_killed_mid_upload_leaves_a_journaled_upload_the_next_delivery_aborts(
    s3_server: S3Server,
    bucket: str,
    instance: Any,
    events_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delivering account that may Put and Abort but not List (the published policy):
    its writer is SIGKILLed with a part stored. The upload stays open (the bucket's owner
    lists it) and the journal in the instance names it. The next delivery of the key, under
    the same policy, cannot list (and says so) yet aborts it from the journal: afterwards
    the owner lists no upload, the journal holds none, and the object is the one delivered."""
    limited = delivery_only(s3_server, bucket, monkeypatch)
    acme = integration(
        s3_server, bucket, frequency=60, extra="      acl: bucket-owner-full-control\n"
    )
    (target,) = build_export_targets([acme])
    upload_id, pid = _kill_mid_upload(s3_server, bucket, instance, tmp_path, limited)

    owner = s3_server.client()
    left = owner.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in left] == [(KEY, upload_id)]
    journal = InstanceUploadJournal(instance)
    (journaled,) = journal.pending(target.destination.journal_name)
    assert (journaled.upload_id, journaled.key, journaled.holder.pid) == (upload_id, KEY, pid)
    assert journaled.endpoint == s3_server.endpoint_url and journaled.bucket == bucket

    result = deliver(
        export_asset(acme),
        "2026-11-25-10:00",
        events_db,
        part_size_mib=5,
        tags={"affise/redelivery": "1"},
        instance=instance,
    )
    ((_, materialization),) = result.all_materializations()
    metadata = materialization.metadata
    assert metadata["leftover_uploads_aborted"].value == "not allowed to list"
    assert metadata["journaled_uploads_aborted"].value == 1
    assert "journaled_uploads_left" not in metadata
    assert owner.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert journal.pending(target.destination.journal_name) == []
    assert keys_in(s3_server, bucket) == [KEY]
    data = fetch(s3_server, bucket, KEY)
    assert hashlib.sha256(data).hexdigest() == metadata["sha256"].value


def test_a_sweep_aborts_what_a_killed_writer_left_and_leaves_what_is_recent_or_live(
    s3_server: S3Server,
    bucket: str,
    instance: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No delivery of the key may ever come (a window never retried): the sweep aborts a
    killed writer's upload from the journal, under the policy without List, once it is
    older than its threshold; an upload a live run holds is left alone."""
    limited = delivery_only(s3_server, bucket, monkeypatch)
    (target,) = build_export_targets([integration(s3_server, bucket, frequency=60)])
    destination = target.destination
    upload_id, _ = _kill_mid_upload(s3_server, bucket, instance, tmp_path, limited)
    # A live run's upload of another key, journaled by it.
    live_run = str(uuid.uuid4())
    instance.add_run(DagsterRun(job_name="j", run_id=live_run, status=DagsterRunStatus.STARTED))
    delivering = s3_server.client(s3_server.intruder)
    live = delivering.create_multipart_upload(Bucket=bucket, Key=KEY + ".live")["UploadId"]
    holder = Holder("another-pod", 1, live_run)
    journal = InstanceUploadJournal(instance)
    journal._update(  # recorded as that run's pod would have
        destination.journal_name,
        lambda uploads: (
            uploads
            | {
                live: OpenUpload(
                    destination.journal_name,
                    destination.endpoint_url or "",
                    bucket,
                    KEY + ".live",
                    live,
                    time.time() - 3600,
                    holder,
                )
            }
        ),
    )
    owner = s3_server.client()

    def open_uploads() -> set[str]:
        return {
            u["UploadId"] for u in owner.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        }

    assert open_uploads() == {upload_id, live}
    # Too recent for this sweep: nothing is aborted.
    (outcome,) = sweep_abandoned_uploads(instance, [destination]).values()
    assert not isinstance(outcome, str) and (outcome.aborted, outcome.held) == (0, 2)
    assert open_uploads() == {upload_id, live}
    # The deployment's sweep sensor says as much in its tick.
    sensor = build_upload_sweep_sensor(build_window_groups([target]))
    tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    assert tick.skip_message == f"{destination.journal_name}: 0 aborted, 0 already gone, 2 held"
    swept = sweep_abandoned_uploads(instance, [destination, destination], older_than=timedelta(0))
    (outcome,) = swept.values()
    assert not isinstance(outcome, str) and (outcome.aborted, outcome.held) == (1, 1)
    assert outcome.failed == []
    assert open_uploads() == {live}
    assert [u.upload_id for u in journal.pending(destination.journal_name)] == [live]


def test_a_run_reads_the_journal_once_for_all_its_destinations(
    instance: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`prefetch` asks the storage once which destinations hold uploads: an object of one that
    holds none asks nothing more, one that holds some reads them, and this process's own
    records are read again."""
    journal = InstanceUploadJournal(instance)
    InstanceUploadJournal(instance).record("a/clicks", "", "b", "k", "left-by-a-killed-run")
    reads: list[set[str]] = []
    real = instance.run_storage.get_cursor_values

    def counted(keys: set[str]) -> dict[str, str]:
        reads.append(set(keys))
        return real(keys)

    monkeypatch.setattr(instance.run_storage, "get_cursor_values", counted)
    journal.prefetch(["a/clicks", "b/clicks", "c/clicks"])
    assert len(reads) == 1
    assert journal.pending("b/clicks") == [] and journal.pending("c/clicks") == []
    assert len(reads) == 1
    assert [u.upload_id for u in journal.pending("a/clicks")] == ["left-by-a-killed-run"]
    journal.record("b/clicks", "", "b", "k2", "mine")
    assert [u.upload_id for u in journal.pending("b/clicks")] == ["mine"]
    # A writer killed after the read leaves an upload: once the read is old, it is read again.
    InstanceUploadJournal(instance).record("c/clicks", "", "b", "k3", "killed-since")
    assert journal.pending("c/clicks") == []
    monkeypatch.setattr(journal, "_read_at", journal._read_at - PREFETCH_SECONDS - 1)
    assert [u.upload_id for u in journal.pending("c/clicks")] == ["killed-since"]
