"""How a change to integrations.yaml goes live by itself, and what keeps running when it cannot.

- The code location is built from an `AppliedConfig` (config/apply.py): the file's valid
  blocks, the last good state of broken ones, never a half-read file. The last applied config is
  kept in the state directory, so a code server that restarts on an unreadable file still serves the
  last good integrations.
- A run rebuilds the definitions from the applied config its run was launched with (Dagster's
  reconstruction metadata), never from the file as it is when the run starts.
- `integrations_config_sensor` watches the file. When its content differs from what the
  location was built from and it can be applied, it asks the webserver to reload the code
  location (GraphQL `reloadRepositoryLocation`); when it cannot, the location keeps running
  and every tick says why in the UI.

Knows files, the webserver's address and Dagster's loading; nothing of S3 or DuckDB.
"""

import hashlib
import json
import logging
import os
import threading
import time
import urllib.parse
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from affise_s3_assets.config.apply import AppliedConfig, apply_integrations, kept_last_good
from affise_s3_assets.config.reading import integrations_path
from affise_s3_assets.dagster_internal import loading_location_name, store_values, stored_values

# The key of the applied config in the definitions' reconstruction metadata.
APPLIED_CONFIG_KEY = "affise/applied_config"
CONFIG_SENSOR_NAME = "integrations_config_sensor"
# How often the file is looked at; with the reload and the catch-up sensor's own interval, a
# new integration's first object lands well within two minutes of the file being saved.
CONFIG_CHECK_SECONDS = 15
DEFAULT_LOCATION_NAME = "affise_s3_assets"
RELOAD_TIMEOUT_SECONDS = 120

log = logging.getLogger("affise_s3_assets")


def state_dir() -> Path | None:
    """Where the last applied config is kept: $AFFISE_STATE_DIR, which the code server's own
    environment sets (scripts/dev.sh, the cluster's user deployment). Unset (a CLI command,
    a test, a benchmark), nothing is read or kept: such a process, loading some other file,
    must never replace the running location's last good state."""
    configured = os.environ.get("AFFISE_STATE_DIR")
    return Path(configured) if configured else None


def _last_good_file(directory: Path) -> Path:
    return directory / "last-applied-config.json"


def read_last_good(directory: Path) -> AppliedConfig | None:
    try:
        applied = AppliedConfig.from_json(_last_good_file(directory).read_text(encoding="utf-8"))
        for problem in applied.dropped:
            log.warning("last applied config in %s: %s", directory, problem)
        return applied
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("ignoring unreadable last applied config in %s: %s", directory, exc)
        return None


def write_last_good(directory: Path, applied: AppliedConfig) -> None:
    """Keep `applied` for the next start; written atomically, never fails the load."""
    target = _last_good_file(directory)
    text = applied.to_json()
    try:
        if target.exists() and target.read_text(encoding="utf-8") == text:
            return
        directory.mkdir(parents=True, exist_ok=True)
        scratch = target.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(text, encoding="utf-8")
        scratch.replace(target)
    except OSError as exc:
        log.warning("could not keep the applied config in %s: %s", directory, exc)


def read_file(path: Path) -> tuple[str, str | None]:
    """(text, error): an unreadable file reads as an error, never as an empty file."""
    try:
        return path.read_text(encoding="utf-8"), None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        return "", f"cannot read integrations file {path}: {reason}"


def apply_file(path: Path | None = None, last_good: AppliedConfig | None = None) -> AppliedConfig:
    """The config the code location should run now, from the file and the last good one.

    A file read as it was when `last_good` was applied gives `last_good` itself, unapplied: the
    config sensor reads the file every few seconds, and 10,000 integrations take seconds.
    """
    path = path or integrations_path()
    text, error = read_file(path)
    digest = hashlib.sha256((text if error is None else error).encode()).hexdigest()
    # A stored state that lost integrations when read is less than that file gave: applied again.
    if (
        last_good is not None
        and not last_good.dropped
        and (last_good.source, last_good.file_sha256) == (str(path), digest)
    ):
        return last_good
    if error is not None:
        return kept_last_good(
            str(path), digest, f"{error}; the last good integrations keep running", last_good
        )
    return apply_integrations(text, source=str(path), last_good=last_good)


def load_live_config() -> AppliedConfig:
    """What a code location loads: the file applied over the last good config, kept for the
    next start (see `state_dir`)."""
    directory = state_dir()
    applied = apply_file(last_good=read_last_good(directory) if directory else None)
    report(applied)
    if directory is not None and applied.file_error is None:
        write_last_good(directory, applied)
    return applied


def report(applied: AppliedConfig) -> None:
    """Every problem in the log, one line each (the sensor's ticks show them in the UI)."""
    if applied.file_error:
        log.error("integrations file NOT applied: %s", applied.file_error)
    for problem in applied.problems:
        log.error("integrations file: %s", problem)


def status_line(applied: AppliedConfig) -> str:
    """The one paragraph an operator reads on the sensor's tick: what runs, what does not."""
    names = ", ".join(i.name for i in applied.integrations) or "none"
    lines = [f"Running {len(applied.integrations)} integrations from {applied.source}: {names}."]
    if applied.file_error:
        lines.append(f"NOT APPLIED: {applied.file_error}.")
    if applied.problems:
        lines.append(f"{len(applied.problems)} problems (fix them in the file):")
        lines.extend(f"- {problem}" for problem in applied.problems)
    return "\n".join(lines)


@dataclass(frozen=True)
class ReloadOutcome:
    """What the webserver answered the last reload this process asked for."""

    file_sha256: str  # the file the reload was asked for
    ok: bool
    message: str


# The outcome of this process's last reload request, kept for the next tick to report: the
# request runs after the tick that asked for it has ended.
_last_reload: ReloadOutcome | None = None


def request_reload(webserver_url: str, location: str) -> tuple[bool, str]:
    """Ask the webserver to reload `location`: (reloaded and loaded, what it answered). A
    reload whose location then fails to load is a failure. Never raises."""
    url = urllib.parse.urlsplit(webserver_url)
    try:
        # Imported here: only a config sensor's reload needs the GraphQL client, not a run.
        from dagster_graphql import DagsterGraphQLClient, ReloadRepositoryLocationStatus

        client = DagsterGraphQLClient(
            url.hostname or "127.0.0.1",
            port_number=url.port,
            use_https=url.scheme == "https",
            timeout=RELOAD_TIMEOUT_SECONDS,
            path_prefix=url.path.rstrip("/"),
        )
        with warnings.catch_warnings():
            # gql deprecates how dagster-graphql 0.29 passes variables; nothing to act on.
            warnings.simplefilter("ignore", DeprecationWarning)
            info = client.reload_repository_location(location)
    except Exception as exc:  # the client raises its own, requests' and gql's errors
        return False, f"reload request to {webserver_url} failed: {type(exc).__name__}: {exc}"
    if info.status == ReloadRepositoryLocationStatus.SUCCESS:
        return True, f"reloaded code location {location!r}"
    said = " ".join((info.message or "no message").split())
    return False, (
        f"reload of code location {location!r} failed ({info.failure_type}): {said} "
        "(the cause: Deployment > Code locations in the UI)"
    )


def _reload_in_background(webserver_url: str, location: str, file_sha256: str) -> None:
    # The reload replaces the process this sensor runs in: the tick must end first.
    def work() -> None:
        global _last_reload
        ok, message = request_reload(webserver_url, location)
        (log.info if ok else log.error)(message)
        _last_reload = ReloadOutcome(file_sha256, ok, message)

    threading.Thread(target=work, name="affise-reload", daemon=True).start()


# Where the last reload asked for is kept (per location): [file sha256, when, epoch seconds].
RELOAD_ASKED_KEY = "affise/config-reload-asked"
# A reload not taken effect after this long has failed (its own request may take 120 s).
RELOAD_GRACE_SECONDS = RELOAD_TIMEOUT_SECONDS + 60


def _asked(text: str | None) -> tuple[str, float] | None:
    try:
        sha, when = json.loads(text or "")
        return str(sha), float(when)
    except (ValueError, TypeError):
        return None


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class ReloadFailed(Exception):
    """The code location could not be reloaded with a changed file: it runs the old one."""


def location_name() -> str:
    """$AFFISE_CODE_LOCATION, else the name the loading code server gives the location."""
    return (
        os.environ.get("AFFISE_CODE_LOCATION") or loading_location_name() or DEFAULT_LOCATION_NAME
    )


def build_config_sensor(applied: AppliedConfig, location: str) -> dg.SensorDefinition:
    """Applies integrations.yaml by itself: reloads the location when the file can be applied,
    and says in every tick what runs and what was refused."""
    path = Path(applied.source)

    @dg.sensor(
        name=CONFIG_SENSOR_NAME,
        minimum_interval_seconds=CONFIG_CHECK_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Applies changes to the integrations file without a restart or a click, "
        "and shows what was refused.\n\n" + status_line(applied),
    )
    def integrations_config_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        current = apply_file(path, last_good=applied)
        if current is applied:  # unchanged, the usual tick
            return dg.SkipReason(status_line(applied))
        if current.file_error is not None:
            context.log.error(f"integrations file NOT applied: {current.file_error}")
            return dg.SkipReason(f"NOT APPLIED: {current.file_error}.\n" + status_line(applied))
        webserver = os.environ.get("AFFISE_WEBSERVER_URL")
        if not webserver:
            return dg.SkipReason(
                f"{path} changed, but AFFISE_WEBSERVER_URL is not set, so this sensor cannot "
                "reload the code location: reload it from Deployment → Code locations.\n"
                + status_line(applied)
            )
        # This process may not live to hear the answer (`dagster code-server start` replaces
        # it at once): what was asked is kept in the instance, and a location still running
        # the old file once a reload's time is up is a failed reload, whoever asked.
        key = f"{RELOAD_ASKED_KEY}/{location}"
        asked = _asked(stored_values(context.instance, {key}).get(key))
        now = time.time()
        answer = _last_reload  # heard by this process, when it lived to hear it
        said = None
        if answer is not None and not answer.ok and answer.file_sha256 == current.file_sha256:
            said = answer.message
        elif asked is not None and asked[0] == current.file_sha256:
            if now - asked[1] < RELOAD_GRACE_SECONDS:
                return dg.SkipReason(
                    f"{path} changed: reloading code location {location!r} (asked at "
                    f"{_when(asked[1])}) with:\n" + status_line(current)
                )
            said = (
                f"the reload of code location {location!r} asked at {_when(asked[1])} has not "
                "taken effect: it still runs the file as it was (its load may have failed: "
                "Deployment > Code locations in the UI)"
            )
        store_values(context.instance, {key: json.dumps([current.file_sha256, now])})
        _reload_in_background(webserver, location, current.file_sha256)
        context.log.info(f"{path} changed: reloading code location {location!r}")
        if said is not None:
            # The location still runs the old config: the tick is a failure, and says why.
            context.log.error(said)
            raise ReloadFailed(f"{said}; asked again.\n" + status_line(applied))
        return dg.SkipReason(
            f"{path} changed: reloading code location {location!r} with:\n" + status_line(current)
        )

    return integrations_config_sensor
