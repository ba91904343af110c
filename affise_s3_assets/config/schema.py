"""The one place that knows `integrations.yaml`: its schema, its rules and its error messages.

Everything downstream receives validated, frozen models. Secrets stay as `${VAR}` references
until the moment a delivery needs them (`resolve_reference`), so definitions load with every
secret unset and no secret value ever lives in a Dagster object.
"""

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

EventType = Literal["clicks", "conversions", "conversion_updates"]
# conversion_updates: the conversions table again, windowed by updated_at (source/events.py).
EVENT_TYPES: tuple[EventType, ...] = ("clicks", "conversions", "conversion_updates")

# A day: a window's delivery may wait for a day's late events at most (reconciliation, not
# a longer wait, is for what comes later).
MAX_LATENESS_MINUTES = 1440
MAX_LOOK_BACK_HOURS = 720  # 30 days of windows compared with the source at most
DEFAULT_INTEGRATIONS_PATH = Path(__file__).resolve().parents[2] / "integrations.yaml"

# Frequencies (minutes) that cut every UTC day into equal windows expressible by one cron:
# divisors of an hour, and whole hours dividing a day.
ALLOWED_FREQUENCIES: tuple[int, ...] = (
    1,
    2,
    3,
    4,
    5,
    6,
    10,
    12,
    15,
    20,
    30,
    60,
    120,
    180,
    240,
    360,
    480,
    720,
    1440,
)

_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
# The environment's own namespaces: no integration may be named into them (its variables'
# prefix would reach, e.g., DAGSTER_PG_PASSWORD or AWS_SECRET_ACCESS_KEY).
_DEPLOYMENT_NAMESPACES = ("aws", "dagster", "affise")
_ENV_REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_REGION_RE = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")
_IP_ADDRESS_RE = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
# Names AWS reserves (access point aliases, Object Lambda, directory and table buckets, ...):
# accepted by the pattern, refused by AWS at delivery time. Other stores have their own.
_RESERVED_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# A key is the directory, "/", then "YYYY/MM/DD/YYYY-MM-DD hh:mm:ss" and the file's suffix;
# S3 caps keys at 1,024 bytes. 64 bytes are kept for the date part and any suffix.
MAX_DIRECTORY_BYTES = 1024 - 64
# How far back `start` may go: windows between it and now, per export. The partitions
# definition lists every one of them (66.7M for 1900 at 1 minute: the UI's partition list
# never returns). 1,000,000 is ~694 days at 1 minute, ~28 years at 15.
MAX_WINDOWS_BEFORE_NOW = 1_000_000
# How far ahead `start` may go: a later one delivers nothing for over a year, silently.
MAX_START_AHEAD = timedelta(days=366)
_OTHER_REGION_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,49}")
# YAML 1.1 turns these bare words into booleans; a directory or bucket written that way
# arrives as True/False and must not become a folder called "False".
_YAML_BOOL_WORDS = "yes/no/on/off/true/false"


class ConfigError(ValueError):
    """integrations.yaml is unreadable or breaks a rule; the message says where and which."""


_MERGE_TAG = "tag:yaml.org,2002:merge"


Position = tuple[int, int]  # (line, column), from 1


def _duplicate_key_error(key: str, first: Position, second: Position, how: str) -> yaml.YAMLError:
    if first[0] == second[0]:
        where = f"line {first[0]}, columns {first[1]} and {second[1]}"
    else:
        where = f"lines {first[0]} and {second[0]}"
    return yaml.constructor.ConstructorError(
        None, None, f"key {key!r} {how} ({where}); keep one", None
    )


def _mapping_keys(
    node: yaml.MappingNode, known: dict[int, dict[str, Position]]
) -> dict[str, Position]:
    """The keys `node` ends up with (written or merged in), each with the line that gives it;
    raises for a key given twice: written twice, by two `<<` keys, or by two merged blocks.
    A key written beside a merge overrides it: that is YAML's way to share settings."""
    if id(node) in known:
        return known[id(node)]
    known[id(node)] = {}  # an anchor merged into itself: no keys of its own
    written: dict[str, Position] = {}
    merges: list[tuple[Position, yaml.Node]] = []
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        line = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        if key_node.tag == _MERGE_TAG:
            if merges:
                raise _duplicate_key_error("<<", merges[0][0], line, "appears twice in one block")
            merges.append((line, value_node))
            continue
        if key_node.value in written:
            raise _duplicate_key_error(
                key_node.value, written[key_node.value], line, "appears twice in one block"
            )
        written[key_node.value] = line
    merged: dict[str, Position] = {}
    for _, value_node in merges:
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                continue  # YAML's own error: only mappings merge
            for key, line in _mapping_keys(source, known).items():
                # The same position twice is one key reached by two paths (a diamond).
                if key in merged and key not in written and merged[key] != line:
                    raise _duplicate_key_error(
                        key, merged[key], line, "comes from two merged blocks"
                    )
                merged.setdefault(key, line)
    known[id(node)] = {**merged, **written}
    return known[id(node)]


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader (libyaml when present: a thousand integrations parse in a tenth of the
    time), refusing a key given twice in one mapping: YAML would keep the last one silently,
    so a second `affiliates: []` would drop a filter and a second `bucket:` retarget a delivery.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        # The whole tree is checked before any of it is built: building a mapping merges
        # its `<<` blocks into it in place, after which a merged key and the one written to
        # override it would look like a key written twice.
        known: dict[int, dict[str, Position]] = {}
        stack, seen = [node], set()
        while stack:
            current = stack.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            if isinstance(current, yaml.MappingNode):
                _mapping_keys(current, known)
                stack.extend(item for pair in current.value for item in pair)
            elif isinstance(current, yaml.SequenceNode):
                stack.extend(current.value)
        return super().construct_document(node)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception:
            # e.g. `!!int` on a word, or PyYAML's own AttributeError on `!!timestamp x`:
            # never the exception's text, which quotes the value (it may be a secret).
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"the value cannot be read as its tag "
                f"{node.tag.replace('tag:yaml.org,2002:', '!!')} says",
                node.start_mark,
            ) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and on which line, without the line's text: YAML's own rendering quotes
    the line, and the line may hold a secret."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return "the file cannot be parsed"
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}: " if mark is not None else ""
    return f"{where}{exc.problem or exc.context or 'the file cannot be parsed'}"


def _other_store(info: ValidationInfo) -> bool:
    """Whether the export's endpoint is a store other than AWS: AWS's naming rules apply to
    AWS however its endpoint is written (none, or https://s3.us-west-2.amazonaws.com)."""
    endpoint = info.data.get("endpoint_url")
    return bool(endpoint) and store_of(endpoint) != "AWS"


def _reject_yaml_bool(value: Any, field: str) -> Any:
    if isinstance(value, bool):
        raise ValueError(
            f"{field} was read as the boolean {value} (YAML reads bare {_YAML_BOOL_WORDS} as "
            f'booleans); quote it, e.g. "off"'
        )
    return value


class EventExportConfig(BaseModel):
    """One form of an integration (Clicks or Conversions): where and how often to deliver."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frequency: int = Field(default=15, description="minutes per window and file")
    # Before bucket and region: an S3-compatible store names its regions its own way (R2's
    # `auto`, Scaleway's `fr-par`) and has none of AWS's reserved bucket names, so those
    # rules depend on whether an endpoint is given.
    endpoint_url: str | None = None
    bucket: str
    region: str
    directory: str = ""
    access_key: str
    secret_key: str
    affiliates: tuple[int, ...] = ()
    advertisers: tuple[str, ...] = ()
    # gzip level: 1-3 use ISA-L (fast), 4-9 zlib (slower, a few percent smaller).
    compression_level: int = Field(default=1, ge=1, le=9, strict=True)
    # For a bucket of another account that still uses ACLs: objects we write are ours unless
    # they grant its owner full control. (A bucket with ACLs disabled, AWS's default since
    # 2023, owns every object already; the grant is then accepted and ignored.)
    acl: Literal["bucket-owner-full-control"] | None = None
    # A JSON manifest beside each data object, written once it is complete
    # (docs/customer-contract.md).
    manifest: bool = Field(default=False, strict=True)
    # csv: gzipped CSV (the contract); parquet: typed columns, zstd (encoding/parquet.py).
    format: Literal["csv", "parquet"] = "csv"
    # Each object is verified from the store's ETags; a store whose ETags are not MD5s (MinIO
    # without S3 compatibility) would fail every window: false keeps Content-MD5 alone.
    verify_etag: bool = Field(default=True, strict=True)

    @model_validator(mode="after")
    def _compression_level_is_csvs(self) -> "EventExportConfig":
        if self.format != "csv" and "compression_level" in self.model_fields_set:
            raise ValueError(
                "compression_level: is the gzip level of CSV files; a parquet file is "
                "compressed with zstd (level 3): remove it"
            )
        return self

    @field_validator("frequency", mode="before")
    @classmethod
    def _frequency_allowed(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number of minutes, got {value!r}")
        if value not in ALLOWED_FREQUENCIES:
            allowed = ", ".join(str(f) for f in ALLOWED_FREQUENCIES)
            raise ValueError(
                f"{value} minutes does not cut a UTC day into equal windows aligned to midnight; "
                f"allowed values: {allowed}"
            )
        return value

    @field_validator("bucket", "region", "directory", mode="before")
    @classmethod
    def _no_yaml_booleans(cls, value: Any, info: Any) -> Any:
        return _reject_yaml_bool(value, info.field_name)

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str, info: ValidationInfo) -> str:
        if not _BUCKET_RE.fullmatch(value) or ".." in value:
            raise ValueError(
                f"{value!r} is not an S3 bucket name (3-63 characters: lowercase letters, "
                "digits, dots and hyphens, starting and ending with a letter or digit)"
            )
        if _other_store(info):
            return value
        if _IP_ADDRESS_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not an S3 bucket name: it must not be an IP address")
        if value.startswith(_RESERVED_BUCKET_PREFIXES) or value.endswith(_RESERVED_BUCKET_SUFFIXES):
            raise ValueError(
                f"{value!r} is not an AWS S3 bucket name: AWS reserves the prefixes "
                f"{', '.join(_RESERVED_BUCKET_PREFIXES)} and the suffixes "
                f"{', '.join(_RESERVED_BUCKET_SUFFIXES)}"
            )
        return value

    @field_validator("region")
    @classmethod
    def _region_name(cls, value: str, info: ValidationInfo) -> str:
        if _other_store(info):
            if not _OTHER_REGION_RE.fullmatch(value):
                raise ValueError(
                    f"{value!r} is not a region name (lowercase letters, digits and hyphens)"
                )
        elif not _REGION_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not an AWS region name such as us-west-2 (other S3-compatible "
                "stores' regions are accepted with a valid endpoint_url)"
            )
        return value

    @field_validator("directory")
    @classmethod
    def _directory_path(cls, value: str) -> str:
        if value.startswith("/") or value.endswith("/"):
            raise ValueError(f"{value!r} must not start or end with a slash")
        if value and any(part in ("", ".", "..") for part in value.split("/")):
            raise ValueError(f"{value!r} must not contain empty, '.' or '..' path segments")
        if any(ord(ch) < 32 or ch == "\x7f" for ch in value):
            raise ValueError("must not contain control characters")
        if "\\" in value:
            raise ValueError(f"{value!r} must not contain a backslash (folders are split by '/')")
        if len(value.encode()) > MAX_DIRECTORY_BYTES:
            raise ValueError(
                f"is {len(value.encode())} bytes; at most {MAX_DIRECTORY_BYTES} (UTF-8), so every "
                "key stays within S3's 1,024"
            )
        return value

    @field_validator("access_key", "secret_key", mode="before")
    @classmethod
    def _credential(cls, value: Any, info: Any) -> Any:
        if not isinstance(value, str) or not value:
            raise ValueError("must be a ${ENV_VAR} reference")
        is_reference = _ENV_REF_RE.fullmatch(value) is not None
        if info.field_name == "secret_key" and not is_reference:
            # Never echo the value: it may be the secret itself.
            raise ValueError(
                "must be an ${ENV_VAR} reference such as ${ACME_AWS_SECRET_ACCESS_KEY}, "
                "never a literal secret"
            )
        if "${" in value and not is_reference:
            raise ValueError("must be exactly one ${ENV_VAR} reference, e.g. ${ACME_AWS_KEY_ID}")
        if not is_reference and not _fit_for_a_header(value):
            # As for a variable's value (resolve_reference).
            raise ValueError("holds whitespace or control characters (a trailing newline?)")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if "@" in value:
            # Not echoed: the part before @ may be a key and a secret.
            raise ValueError(
                "must not carry credentials (user:password@); use access_key and secret_key"
            )
        if not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", value):
            raise ValueError(f"{value!r} must be an http:// or https:// URL")
        # botocore's own check: it would otherwise fail only at delivery time.
        if not (is_valid_endpoint_url(value) or is_valid_ipv6_endpoint_url(value)):
            raise ValueError(
                f"{value!r} is not a valid endpoint URL (host names: letters, digits, '-', '.')"
            )
        return value

    @field_validator("affiliates", mode="before")
    @classmethod
    def _affiliate_ids(cls, value: Any) -> Any:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ValueError("must be a list of integer affiliate ids")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int):
                raise ValueError(f"affiliate ids are integers, got {item!r}")
        return tuple(value)

    @field_validator("advertisers", mode="before")
    @classmethod
    def _advertiser_ids(cls, value: Any) -> Any:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ValueError("must be a list of advertiser id strings")
        for item in value:
            if not isinstance(item, str) or not item:
                raise ValueError(f"advertiser ids are non-empty strings (quote them), got {item!r}")
        return tuple(value)


class IntegrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    start: datetime
    enabled: bool = True
    clicks: EventExportConfig | None = None
    conversions: EventExportConfig | None = None
    conversion_updates: EventExportConfig | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} must match [a-z][a-z0-9_]{{0,63}} (it becomes part of asset keys)"
            )
        if value.split("_")[0] in _DEPLOYMENT_NAMESPACES:
            raise ValueError(
                f"{value!r} must not begin with {' or '.join(_DEPLOYMENT_NAMESPACES)}: its "
                f"variables would be named {value.upper()}_..., which is the deployment's own "
                "environment (its AWS, Dagster or affise-s3 settings and secrets)"
            )
        return value

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, value: Any) -> Any:
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, str):
            try:
                parsed = datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
            except ValueError:
                raise ValueError(
                    f'{value!r} must be "YYYY-MM-DD hh:mm:ss" in UTC, e.g. "2026-11-01 00:00:00"'
                ) from None
        else:
            raise ValueError(f'must be a "YYYY-MM-DD hh:mm:ss" string (UTC), got {value!r}')
        if parsed.tzinfo is not None:
            if parsed.utcoffset() != timedelta(0):
                raise ValueError("must be UTC: write it without an offset")
            parsed = parsed.replace(tzinfo=None)
        return parsed

    @field_validator("enabled", mode="before")
    @classmethod
    def _enabled(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value

    @model_validator(mode="after")
    def _has_an_export(self) -> "IntegrationConfig":
        if all(getattr(self, event_type) is None for event_type in EVENT_TYPES):
            raise ValueError(
                "needs at least one of the blocks clicks, conversions, conversion_updates"
            )
        return self

    @model_validator(mode="after")
    def _credentials_are_its_own(self) -> "IntegrationConfig":
        # An access key goes out in clear in every request's Authorization header: were any
        # variable allowed, whoever edits one block could send another customer's secret, or
        # the deployment's, to an endpoint of their choosing. One name per integration and
        # role, derived from the name alone (two names never give one variable, whatever else
        # the file holds or held), so a block can only ever name its own.
        wanted = credential_variables(self.name)
        wrong = []
        for event_type, export in self.exports():
            for field_name, variable in zip(("access_key", "secret_key"), wanted, strict=True):
                named = env_reference_name(getattr(export, field_name))
                literal = named is None and field_name == "access_key"
                if not literal and named != variable:
                    wrong.append((f"{event_type}.{field_name}", variable, named))
        if wrong:
            (field, variable, named), *others = wrong
            also = f"; wrong as well: {', '.join(f for f, _, _ in others)}" if others else ""
            raise ValueError(
                f"{field}: must be ${{{variable}}}"
                + (" or a literal key id" if field.endswith("access_key") else "")
                + f", not ${{{named}}}: an integration's credentials are named for it, "
                f"so no block can name another's secret, or the deployment's{also}"
            )
        return self

    def exports(self) -> list[tuple[EventType, EventExportConfig]]:
        """The configured (event type, export) pairs, clicks first."""
        pairs = [(event_type, getattr(self, event_type)) for event_type in EVENT_TYPES]
        return [(event_type, export) for event_type, export in pairs if export is not None]


def credential_variables(name: str) -> tuple[str, str]:
    """The variables an integration's access key id and secret are read from:
    acme -> ACME_AWS_ACCESS_KEY_ID, ACME_AWS_SECRET_ACCESS_KEY."""
    return f"{name.upper()}_AWS_ACCESS_KEY_ID", f"{name.upper()}_AWS_SECRET_ACCESS_KEY"


class Lateness(BaseModel):
    """How long after a window's end its scheduled delivery waits, per event type, in minutes:
    events keep arriving a little after their `created_at` (a conversion's postback far
    longer than a click). The file's top-level `lateness:` block; its defaults are these."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clicks: int = Field(default=2, ge=0, le=MAX_LATENESS_MINUTES, strict=True)
    conversions: int = Field(default=10, ge=0, le=MAX_LATENESS_MINUTES, strict=True)
    # A status change is written by the same postback path as a conversion.
    conversion_updates: int = Field(default=10, ge=0, le=MAX_LATENESS_MINUTES, strict=True)

    def of(self, event_type: EventType) -> timedelta:
        return timedelta(minutes=getattr(self, event_type))


class Reconciliation(BaseModel):
    """How far back delivered windows are compared with what the source holds now, and how
    often: a window whose rows changed since (late events) is delivered again, same key. The
    file's top-level `reconciliation:` block; its defaults are these. 0 hours: never."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    look_back_hours: int = Field(default=72, ge=0, le=MAX_LOOK_BACK_HOURS, strict=True)
    every_minutes: int = Field(default=30, ge=5, le=1440, strict=True)

    @property
    def look_back(self) -> timedelta:
        return timedelta(hours=self.look_back_hours)


# The day a demo instance first ran (scripts/dev.sh keeps it in $DAGSTER_HOME/demo-day).
DEMO_DAY_VARIABLE = "AFFISE_DEMO_DAY"
_DAY_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _day(value: Any) -> date:
    """A day written "YYYY-MM-DD" (a YAML date too, never a datetime); ValueError otherwise."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _DAY_RE.fullmatch(value):
        return date.fromisoformat(value)
    raise ValueError(f'must be a day, "YYYY-MM-DD", got {value!r}')


class DemoDates(BaseModel):
    """The demo file's top-level `demo:` block: the day its dates are written for. With
    $AFFISE_DEMO_DAY set, every `start` of the file moves by the whole days from this day to
    that one (`demo_shift`). A deployment's file has no such block: its starts never move."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    day: date

    @field_validator("day", mode="before")
    @classmethod
    def _written_for(cls, value: Any) -> Any:
        return _day(value)


def demo_shift(raw: Any, problems: list[str]) -> timedelta:
    """How far the starts of a file with this `demo:` block move: from its day to
    $AFFISE_DEMO_DAY, in whole days, so every window keeps its boundaries. Nothing moves
    without the block or the variable; a broken one moves nothing and adds a problem."""
    if raw is None:
        return timedelta(0)
    try:
        written = DemoDates.model_validate(raw).day
    except ValidationError as exc:
        for error in exc.errors(include_input=False):
            field = "".join(f"{part}: " for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "model_type":
                message = 'must be a mapping, e.g. {day: "2026-11-27"}'
            elif error["type"] == "extra_forbidden":
                message = "is not a field (day)"
            elif error["type"] == "missing":
                message = "is required"
            problems.append(f"demo: {field}{message}; the starts are used as written")
        return timedelta(0)
    configured = os.environ.get(DEMO_DAY_VARIABLE)
    if not configured:
        return timedelta(0)
    try:
        pinned = _day(configured)
    except ValueError:
        problems.append(
            f"{DEMO_DAY_VARIABLE}: {configured!r} is not a day (YYYY-MM-DD); the starts are "
            "used as written"
        )
        return timedelta(0)
    return pinned - written


class IntegrationsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lateness: Lateness = Lateness()
    reconciliation: Reconciliation = Reconciliation()
    integrations: tuple[IntegrationConfig, ...] = ()


def _describe(error: dict[str, Any], raw: Any) -> str:
    """Turn one pydantic error into 'integration X: field Y: rule' in the YAML's own terms."""
    loc = list(error["loc"])
    where = "integrations.yaml"
    if len(loc) >= 2 and loc[0] == "integrations" and isinstance(loc[1], int):
        index = loc[1]
        name = None
        items = raw.get("integrations") if isinstance(raw, dict) else None
        if isinstance(items, list) and index < len(items) and isinstance(items[index], dict):
            name = items[index].get("name")
        where = f"integration {name!r}" if isinstance(name, str) else f"integration #{index + 1}"
        loc = loc[2:]
    field = ".".join(str(part) for part in loc) or "(entry)"
    message = error["msg"].removeprefix("Value error, ")
    # A rule of the whole block that names the field it is about ("clicks.secret_key: ...").
    named = re.match(r"([a-z_]+\.[a-z_]+): ", message) if not loc else None
    if named:
        field, message = named.group(1), message[named.end() :]
    if error["type"] == "missing":
        message = "is required"
    elif error["type"] == "extra_forbidden":
        message = "is not a known field"
    return f"{where}: {field}: {message}"


def parse_integrations(
    text: str, source: str = "integrations.yaml", now: datetime | None = None
) -> IntegrationsFile:
    """The strict reading (tests, tools): every rule of `apply_integrations`, and a ConfigError
    listing every one broken instead of leaving blocks out."""
    entries, settings = _parse_file(text, source)
    applied = _apply_entries(entries, source, _digest(text), None, now, settings)
    if applied.problems:
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(applied.problems))
    return IntegrationsFile(
        integrations=applied.integrations,
        lateness=applied.lateness,
        reconciliation=applied.reconciliation,
    )


# --- Applying a file whose blocks may be broken --------------------------------------------
#
# A running deployment must not stop every customer for one customer's typo. `apply_integrations`
# keeps every valid block, leaves out each broken one (falling back to its last good state when
# there is one) and refuses exports whose objects could land on the same key.


def _yaml_dict(integration: IntegrationConfig) -> dict[str, Any]:
    """The block as it would be written in integrations.yaml (round-trips through the rules)."""
    data = integration.model_dump(mode="python", exclude_none=True)
    data["start"] = integration.start.strftime("%Y-%m-%d %H:%M:%S")
    for event_type in EVENT_TYPES:
        if event_type in data:
            block = data[event_type]
            block["affiliates"] = list(block["affiliates"])
            block["advertisers"] = list(block["advertisers"])
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

    def __str__(self) -> str:
        folder = self.directory + "/" if self.directory else ""
        return f"integration {self.integration!r} {self.event_type} (s3://{self.bucket}/{folder})"


_AWS_ENDPOINT_RE = re.compile(r"https?://s3([.-][a-z0-9-]+)*\.amazonaws\.com(\.cn)?")


def store_of(endpoint_url: str | None) -> str:
    """One name per store, however its endpoint is spelled: AWS's own endpoints are "AWS";
    scheme and host are lower-cased, default ports and trailing slashes dropped."""
    if endpoint_url is None:
        return "AWS"
    url = endpoint_url.strip().rstrip("/").lower()
    for scheme, port in (("http://", ":80"), ("https://", ":443")):
        if url.startswith(scheme) and url.endswith(port):
            url = url.removesuffix(port)
    return "AWS" if _AWS_ENDPOINT_RE.fullmatch(url) else url


def _exports(integration: IntegrationConfig) -> list[_Export]:
    return [
        _Export(
            integration.name,
            event_type,
            store_of(export.endpoint_url),
            export.bucket,
            export.directory,
        )
        for event_type, export in integration.exports()
    ]


_YEAR_SEGMENT_RE = re.compile(r"\d{4}")


def _lies_in_date_folders(directory: str, other: str) -> bool:
    """Whether `other`'s objects fall inside `directory`'s YYYY/MM/DD/ folders."""
    if directory == other:
        return True
    rest = other.removeprefix(directory + "/") if directory else other
    if rest == other and directory:
        return False
    return _YEAR_SEGMENT_RE.fullmatch(rest.split("/", 1)[0]) is not None


def exports_collide(a: _Export, b: _Export) -> bool:
    """Two exports whose keys could be the same object, or one's inside the other's date
    folders: a customer listing one folder would get the other's files, or lose its own."""
    if (a.store, a.bucket) != (b.store, b.bucket):
        return False
    return _lies_in_date_folders(a.directory, b.directory) or _lies_in_date_folders(
        b.directory, a.directory
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
            if _YEAR_SEGMENT_RE.fullmatch(segment):
                parent = "/".join(segments[:depth])
                folder = (export.store, export.bucket, parent)
                pairs.extend((owner, export) for owner in by_folder.get(folder, ()))
    return pairs


# The file's top-level blocks besides `integrations`: settings of the whole deployment, and
# the demo file's `demo:` (DemoDates).
SETTINGS_BLOCKS = ("lateness", "reconciliation", "demo")


def _parse_file(text: str, source: str) -> tuple[list[Any], dict[str, Any]]:
    """The file's entries and its settings blocks (by name), unvalidated; ConfigError if the
    file as a whole is unusable."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(exc)}") from None
    except (TypeError, ValueError):  # e.g. a list used as a key: unhashable
        raise ConfigError(f"{source}: not valid YAML: a key must be a plain value") from None
    if raw is None:
        return [], {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must be a mapping with an 'integrations' list")
    unknown = sorted(str(key) for key in raw if key not in ("integrations", *SETTINGS_BLOCKS))
    if unknown:
        raise ConfigError(f"{source}: {', '.join(unknown)}: is not a known field")
    settings = {name: raw[name] for name in SETTINGS_BLOCKS if raw.get(name) is not None}
    entries = raw.get("integrations")
    if entries is None:
        return [], settings
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: integrations: must be a list of integration blocks")
    return entries, settings


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
        entries, settings = _parse_file(text, source)
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
                _describe({**error, "loc": ("integrations", index, *error["loc"])}, raw)
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
                    "could write the same keys (or one inside the other's YYYY/MM/DD/ folders); "
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


Settings = TypeVar("Settings", Lateness, Reconciliation)


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


def integrations_path() -> Path:
    return Path(os.environ.get("AFFISE_INTEGRATIONS") or DEFAULT_INTEGRATIONS_PATH)


def load_integrations(path: str | Path | None = None) -> IntegrationsFile:
    """Read and validate the integrations file (default: $AFFISE_INTEGRATIONS)."""
    path = Path(path) if path is not None else integrations_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read integrations file {path}: {exc.strerror}") from None
    return parse_integrations(text, source=str(path))


def env_reference_name(reference: str) -> str | None:
    """The variable named by a `${VAR}` reference, or None for a literal."""
    match = _ENV_REF_RE.fullmatch(reference)
    return match.group(1) if match else None


def _fit_for_a_header(value: str) -> bool:
    """A credential goes into the signed Authorization header: one pasted with its newline
    is refused by http.client, whose error quotes the header (key id and signature)."""
    return not any(char.isspace() or not char.isprintable() for char in value)


def resolve_reference(reference: str, what: str) -> str:
    """Resolve `${VAR}` from the environment at delivery time; literals pass through.

    The error names the variable and `what` it is for, never a value.
    """
    variable = env_reference_name(reference)
    if variable is None:
        return reference
    value = os.environ.get(variable)
    if not value:
        raise ConfigError(f"{what}: environment variable {variable} is not set")
    if not _fit_for_a_header(value):
        raise ConfigError(
            f"{what}: environment variable {variable} holds whitespace or control characters "
            "(a trailing newline?); credentials are refused until it is fixed"
        )
    return value
