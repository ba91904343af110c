"""Applying a file whose blocks may be broken: a running deployment must not stop every customer
for one customer's typo. `apply_integrations` keeps every valid block, leaves out each broken
one (falling back to its last good state when there is one) and refuses exports whose objects
could land on the same key; `parse_integrations` is the strict reading (every problem is an
error). The rules of a block are schema.py's.
"""

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
)

from affise_s3_assets.config import ConfigError
from affise_s3_assets.config.reading import integrations_path, parse_file
from affise_s3_assets.config.schema import (
    EVENT_TYPES,
    MAX_LATENESS_MINUTES,
    MAX_LOOK_BACK_HOURS,
    MAX_START_AHEAD,
    MAX_WINDOWS_BEFORE_NOW,
    EventType,
    IntegrationConfig,
    IntegrationsFile,
    Lateness,
    Reconciliation,
    Settings,
    demo_shift,
    describe_error,
    store_of,
)


def parse_integrations(
    text: str, source: str = "integrations.yaml", now: datetime | None = None
) -> IntegrationsFile:
    """The strict reading (tests, tools): every rule of `apply_integrations`, and a ConfigError
    listing every one broken instead of leaving blocks out."""
    entries, settings = parse_file(text, source)
    applied = _apply_entries(entries, source, _digest(text), None, now, settings)
    if applied.problems:
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(applied.problems))
    return IntegrationsFile(
        integrations=applied.integrations,
        lateness=applied.lateness,
        reconciliation=applied.reconciliation,
    )


def _yaml_dict(integration: IntegrationConfig) -> dict[str, Any]:
    """The block as it would be written in integrations.yaml (round-trips through the rules)."""
    data = integration.model_dump(mode="python", exclude_none=True)
    data["start"] = integration.start.strftime("%Y-%m-%d %H:%M:%S")
    for event_type in EVENT_TYPES:
        if event_type in data:
            block = data[event_type]
            block["affiliates"] = list(block["affiliates"])
            block["advertisers"] = list(block["advertisers"])
            if block["columns"]:
                block["columns"] = list(block["columns"])
            else:
                del block["columns"]  # every column: the default, never written empty
            if block["format"] != "csv":
                del block["compression_level"]  # CSV's alone: refused beside another format
    return data


class AppliedConfig(BaseModel):
    """What the code location runs: the integrations applied from one reading of the file.

    `problems` lists every block left out or kept at its last good state, each naming the
    integration, the field and the rule; `file_error` says why the file as a whole could not be
    applied (then `integrations` is the last good set). `file_sha256` is the content read, so a
    watcher can tell whether the file changed since. `dropped` (a stored state only, never
    written): the integrations `from_json` could not keep, one problem each, also in
    `problems`.
    """

    model_config = ConfigDict(frozen=True)

    source: str
    file_sha256: str
    integrations: tuple[IntegrationConfig, ...] = ()
    problems: tuple[str, ...] = ()
    file_error: str | None = None
    dropped: tuple[str, ...] = ()
    lateness: Lateness = Lateness()
    reconciliation: Reconciliation = Reconciliation()

    def to_json(self) -> str:
        return json.dumps(
            {
                "source": self.source,
                "file_sha256": self.file_sha256,
                "lateness": self.lateness.model_dump(),
                "reconciliation": self.reconciliation.model_dump(),
                "integrations": [_yaml_dict(i) for i in self.integrations],
                "problems": list(self.problems),
                "file_error": self.file_error,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> "AppliedConfig":
        """The stored state; an integration that breaks a rule of this version (stored by an
        older one) is left out alone, named in `problems`, never a value: the others keep
        their last good state, and the file's block of it is judged afresh."""
        data = json.loads(text)
        integrations, dropped = [], []
        if not isinstance(data["integrations"], list) or not isinstance(data["problems"], list):
            raise ValueError("integrations and problems: not lists")
        for item in data["integrations"]:
            try:
                integrations.append(IntegrationConfig.model_validate(item))
            except ValidationError:
                dropped.append(
                    f"integration {item.get('name') if isinstance(item, dict) else None!r}: "
                    "its last applied state breaks a rule of this version and is not kept"
                )
        return cls(
            source=data["source"],
            file_sha256=data["file_sha256"],
            integrations=tuple(integrations),
            problems=(*dropped, *data["problems"]),
            file_error=data["file_error"],
            dropped=tuple(dropped),
            # Written before these blocks existed: the defaults.
            lateness=Lateness.model_validate(data.get("lateness", {})),
            reconciliation=Reconciliation.model_validate(data.get("reconciliation", {})),
        )


def kept_last_good(
    source: str, digest: str, file_error: str, last_good: AppliedConfig | None
) -> AppliedConfig:
    """What runs when the file as a whole cannot be applied: the last good state, saying why
    (and which of its integrations it could not keep when read)."""
    return AppliedConfig(
        source=source,
        file_sha256=digest,
        integrations=last_good.integrations if last_good else (),
        problems=last_good.dropped if last_good else (),
        file_error=file_error,
        lateness=last_good.lateness if last_good else Lateness(),
        reconciliation=last_good.reconciliation if last_good else Reconciliation(),
    )


@dataclass(frozen=True)
class _Export:
    integration: str
    event_type: EventType
    store: str  # the endpoint, or "AWS": the same bucket name on two stores is two buckets
    bucket: str
    directory: str
    layout: str = "dated"  # where its date folders are: YYYY/ (dated) or dt=YYYY-MM-DD/ (hive)

    def __str__(self) -> str:
        folder = self.directory + "/" if self.directory else ""
        return f"integration {self.integration!r} {self.event_type} (s3://{self.bucket}/{folder})"


def _exports(integration: IntegrationConfig) -> list[_Export]:
    return [
        _Export(
            integration.name,
            event_type,
            store_of(export.endpoint_url),
            export.bucket,
            export.directory,
            export.layout,
        )
        for event_type, export in integration.exports()
    ]


# The first folder of a window's key below its export's directory: a year (YYYY/MM/DD/) for
# every export, and a Hive day (dt=YYYY-MM-DD/) for an export with `layout: hive` (a `dt=`
# folder below a dated export is no date folder of it: pairs accepted before hive layouts
# existed stay accepted).
_YEAR_SEGMENT_RE = re.compile(r"\d{4}")
_HIVE_DAY_SEGMENT_RE = re.compile(r"dt=.*")


def _date_segment(segment: str, layout: str) -> bool:
    """Whether `segment`, right below an export of `layout`, can be one of its date folders."""
    if _YEAR_SEGMENT_RE.fullmatch(segment):
        return True
    return layout == "hive" and _HIVE_DAY_SEGMENT_RE.fullmatch(segment) is not None


def _lies_in_date_folders(directory: str, other: str, layout: str = "dated") -> bool:
    """Whether `other`'s objects fall inside the date folders (YYYY/MM/DD/, or dt=YYYY-MM-DD/
    with `layout: hive`) of the export at `directory`."""
    if directory == other:
        return True
    rest = other.removeprefix(directory + "/") if directory else other
    if rest == other and directory:
        return False
    return _date_segment(rest.split("/", 1)[0], layout)


def exports_collide(a: _Export, b: _Export) -> bool:
    """Two exports whose keys could be the same object, or one's inside the other's date
    folders: a customer listing one folder would get the other's files, or lose its own."""
    if (a.store, a.bucket) != (b.store, b.bucket):
        return False
    return _lies_in_date_folders(a.directory, b.directory, a.layout) or _lies_in_date_folders(
        b.directory, a.directory, b.layout
    )


def _clashes(exports: list[_Export]) -> list[tuple[_Export, _Export]]:
    """Every colliding pair (`exports_collide`), found through an index of directories: each
    export is compared only with exports in its own directory, and with those whose directory
    is an ancestor of its own followed by a year folder, so 10,000 integrations in one bucket
    cost milliseconds, not a comparison of every pair."""
    by_folder: dict[tuple[str, str, str], list[_Export]] = {}
    for export in exports:
        by_folder.setdefault((export.store, export.bucket, export.directory), []).append(export)
    pairs = [
        (a, b) for same in by_folder.values() for i, a in enumerate(same) for b in same[i + 1 :]
    ]
    for export in exports:
        segments = export.directory.split("/") if export.directory else []
        for depth, segment in enumerate(segments):
            parent = "/".join(segments[:depth])
            for owner in by_folder.get((export.store, export.bucket, parent), ()):
                if _date_segment(segment, owner.layout):
                    pairs.append((owner, export))
    return pairs


def apply_integrations(
    text: str,
    source: str = "integrations.yaml",
    last_good: AppliedConfig | None = None,
    now: datetime | None = None,
) -> AppliedConfig:
    """Apply the file block by block; never raises for a broken block.

    - A block that breaks a rule is left out, or kept at its state in `last_good` if it had
      one; every problem is listed, naming the integration, the field and the rule.
    - A name used by more than one block: every block of it is treated as broken.
    - Exports that collide (`exports_collide`): an export already applied in `last_good` with
      the same bucket and directory keeps delivering and the newcomer is refused; when neither
      was applied before, both are refused, since neither can be known to be the owner.
    - A file that cannot be read as a list of blocks changes nothing: `last_good` stays.
    - A `start` more than MAX_START_AHEAD after `now` (default: the clock), or more than
      MAX_WINDOWS_BEFORE_NOW windows before it, is refused; an export that `last_good`
      already delivers with that start and frequency is not (time passing never breaks it).
    - A file with a `demo:` block, read with $AFFISE_DEMO_DAY set, has every start moved by
      the whole days between them (`demo_shift`) before these rules.
    """
    try:
        entries, settings = parse_file(text, source)
    except ConfigError as exc:
        return kept_last_good(
            source,
            _digest(text),
            f"{exc}; nothing in it was applied, the last good integrations keep running",
            last_good,
        )
    return _apply_entries(entries, source, _digest(text), last_good, now, settings)


def _start_problems(
    integration: IntegrationConfig, now: datetime, established: set[tuple[str, str, int]]
) -> list[str]:
    """The time-dependent rules of `start`, per export."""
    label = f"integration {integration.name!r}: start"
    if integration.start > now + MAX_START_AHEAD:
        return [
            f"{label}: {integration.start:%Y-%m-%d %H:%M:%S} is more than "
            f"{MAX_START_AHEAD.days} days ahead; nothing would be delivered until then"
        ]
    problems = []
    for event_type, export in integration.exports():
        windows = (now - integration.start) // timedelta(minutes=export.frequency)
        key = (integration.name, event_type, export.frequency)
        if windows > MAX_WINDOWS_BEFORE_NOW and key not in established:
            problems.append(
                f"{label}: {integration.start:%Y-%m-%d %H:%M:%S} is {windows:,} windows of "
                f"{export.frequency} min ({event_type}) before now; at most "
                f"{MAX_WINDOWS_BEFORE_NOW:,}: start later or choose a longer frequency"
            )
    return problems


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _apply_entries(
    entries: list[Any],
    source: str,
    digest: str,
    last_good: AppliedConfig | None,
    now: datetime | None = None,
    settings: dict[str, Any] | None = None,
) -> AppliedConfig:
    """The rules of `apply_integrations`, block by block, over the file's entries."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    previous = {i.name: i for i in last_good.integrations} if last_good else {}
    problems: list[str] = []
    settings = settings or {}
    lateness = _settings_block(
        "lateness",
        Lateness,
        settings.get("lateness"),
        last_good.lateness if last_good else Lateness(),
        problems,
        "a mapping of event type to minutes, e.g. {clicks: 2}",
        {field: f"must be whole minutes from 0 to {MAX_LATENESS_MINUTES}" for field in EVENT_TYPES},
    )
    reconciliation = _settings_block(
        "reconciliation",
        Reconciliation,
        settings.get("reconciliation"),
        last_good.reconciliation if last_good else Reconciliation(),
        problems,
        "a mapping, e.g. {look_back_hours: 72, every_minutes: 30}",
        {
            "look_back_hours": f"must be whole hours from 0 (never) to {MAX_LOOK_BACK_HOURS}",
            "every_minutes": "must be whole minutes from 5 to 1440",
        },
    )
    moved = demo_shift(settings.get("demo"), problems)
    raw = {"integrations": entries}
    chosen: dict[str, IntegrationConfig] = {}
    names = [e.get("name") if isinstance(e, dict) else None for e in entries]
    uses = Counter(name for name in names if isinstance(name, str))
    order: list[str] = []
    for index, entry in enumerate(entries):
        name = names[index]
        label = f"integration {name!r}" if isinstance(name, str) else f"integration #{index + 1}"
        if isinstance(name, str) and uses[name] > 1:
            if name not in order:
                problems.append(
                    f"{label}: name: appears more than once ({uses[name]} times); names must "
                    "be unique"
                )
                order.append(name)
            continue
        try:
            integration = IntegrationConfig.model_validate(entry)
        except ValidationError as exc:
            problems.extend(
                describe_error({**error, "loc": ("integrations", index, *error["loc"])}, raw)
                for error in exc.errors(include_input=False)
            )
            if isinstance(name, str) and name not in order:
                order.append(name)
            continue
        if moved:
            integration = integration.model_copy(update={"start": integration.start + moved})
        before = previous.get(integration.name)
        delivering = (
            {(before.name, event_type, e.frequency) for event_type, e in before.exports()}
            if before is not None and before.start == integration.start
            else set()
        )
        start_problems = _start_problems(integration, now, delivering)
        if start_problems:
            problems.extend(start_problems)
            order.append(integration.name)
            continue
        chosen[integration.name] = integration
        order.append(integration.name)
    broken = [name for name in order if name not in chosen]

    accepted: dict[str, IntegrationConfig] = dict(chosen)
    for name in broken:
        if name in previous:
            accepted[name] = previous[name]
            problems.append(f"integration {name!r}: kept at its last good state until fixed")

    established = {e for i in previous.values() for e in _exports(i)}
    refused: set[str] = set()
    # Each pass refuses at least one integration, so this ends.
    while True:
        clashes = _clashes(
            [e for name in order if name in accepted for e in _exports(accepted[name])]
        )
        if not clashes:
            break
        losers: set[str] = set()
        for a, b in clashes:
            a_owns, b_owns = a in established, b in established
            if a_owns != b_owns:
                loser = b if a_owns else a
                owner = a if a_owns else b
                losers.add(loser.integration)
                problems.append(
                    f"integration {loser.integration!r}: {loser.event_type}.directory: "
                    f"its objects could overwrite or mix with those of {owner}, which already "
                    "delivers there; choose another bucket or directory"
                )
            else:
                losers.update({a.integration, b.integration})
                problems.append(
                    f"integration {a.integration!r}: {a.event_type}.directory: {a} and {b} "
                    "could write the same keys (or one inside the other's date folders); "
                    "both are refused until one moves"
                )
        for name in losers:
            fallback = previous.get(name)
            if name in refused or fallback is None or accepted.get(name) == fallback:
                accepted.pop(name, None)
            else:
                accepted[name] = fallback
                problems.append(f"integration {name!r}: kept at its last good state until fixed")
            refused.add(name)
    return AppliedConfig(
        source=source,
        file_sha256=digest,
        integrations=tuple(accepted[name] for name in order if name in accepted),
        problems=tuple(dict.fromkeys(problems)),
        lateness=lateness,
        reconciliation=reconciliation,
    )


def _settings_block(
    name: str,
    model: type[Settings],
    raw: Any,
    kept: Settings,
    problems: list[str],
    shape: str,
    bounds: dict[str, str],
) -> Settings:
    """A top-level settings block (absent: the defaults); a broken one keeps the last good (or
    default) values, each problem naming the block, the field and the rule."""
    if raw is None:
        return model()
    if not isinstance(raw, dict):
        problems.append(f"{name}: must be {shape}; kept at {kept.model_dump()}")
        return kept
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors(include_input=False):
            field = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                known = ", ".join(model.model_fields)
                message = f"is not {'an event type' if model is Lateness else 'a field'} ({known})"
            elif error["type"] in ("greater_than_equal", "less_than_equal", "int_type"):
                message = bounds.get(field, message)
            problems.append(f"{name}: {field}: {message}; kept at {kept.model_dump()}")
        return kept


def load_integrations(path: str | Path | None = None) -> IntegrationsFile:
    """Read and validate the integrations file (default: $AFFISE_INTEGRATIONS)."""
    path = Path(path) if path is not None else integrations_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read integrations file {path}: {exc.strerror}") from None
    return parse_integrations(text, source=str(path))
