"""The rules of `integrations.yaml`: every field of a block, what it may hold and the message
that says which rule it breaks, in the file's own terms (`describe_error`).

Everything downstream receives validated, frozen models (through apply.py). Secrets stay as
`${VAR}` references until the moment a delivery needs them (secrets.py, `resolve_reference`),
so definitions load with every secret unset and no secret value ever lives in a Dagster object.
"""

import os
import re
from datetime import date, datetime, timedelta
from typing import Any, Literal, TypeVar

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

from affise_s3_assets.config.secrets import (
    ENV_REF_RE,
    credential_variables,
    env_reference_name,
    fit_for_a_header,
)

EventType = Literal["clicks", "conversions", "conversion_updates"]
# conversion_updates: the conversions table again, windowed by updated_at
# (source/event_types.py).
EVENT_TYPES: tuple[EventType, ...] = ("clicks", "conversions", "conversion_updates")

# A day: a window's delivery may wait for a day's late events at most (reconciliation, not
# a longer wait, is for what comes later).
MAX_LATENESS_MINUTES = 1440
MAX_LOOK_BACK_HOURS = 720  # 30 days of windows compared with the source at most

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
# An IAM role's ARN; S3-compatible stores (Ceph RGW) may leave out the account id.
_ROLE_ARN_RE = re.compile(r"arn:aws[a-z-]*:iam::(\d{12})?:role/[\w+=,.@/-]{1,512}")
# A KMS key id (a UUID, or a multi-Region mrk-...), its ARN, or an alias (alias/NAME, or its ARN).
_KMS_KEY_RE = re.compile(r"[A-Za-z0-9:/_+=,.@-]{1,2048}")


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
    # The customer's credentials: keys (`${VAR}` references), or instead an IAM role of theirs
    # that the deployment's own principal assumes with the integration's ExternalId
    # (`affise-s3 external-id NAME`; docs/customer-contract.md).
    access_key: str | None = None
    secret_key: str | None = None
    role_arn: str | None = None
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
    # Server-side encryption of every object: S3-managed keys (AES256) or the customer's KMS
    # key (aws:kms with kms_key_id). None: the bucket's default encryption applies.
    sse: Literal["AES256", "aws:kms"] | None = None
    kms_key_id: str | None = None
    # A marker beside the windows of each day (or hour) once every one of them is delivered.
    completion: Literal["day", "hour"] | None = None
    # Folders: dated ({directory}/YYYY/MM/DD/) or hive ({directory}/dt=YYYY-MM-DD/hour=HH/).
    layout: Literal["dated", "hive"] = "dated"
    # File names: datetime ("2026-11-25 10:15:00.csv.gz") or compact ("20261125T101500Z.csv.gz",
    # no space or colon, for Hadoop-based readers).
    file_name: Literal["datetime", "compact"] = "datetime"
    # The columns each file holds, in this order (default: every column of the event type, in
    # the schema's order); checked against the event type in IntegrationConfig.
    columns: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_way_in(self) -> "EventExportConfig":
        keys = [name for name in ("access_key", "secret_key") if getattr(self, name) is not None]
        if self.role_arn is not None and keys:
            raise ValueError(
                f"role_arn: is given with {' and '.join(keys)}: a destination is reached with "
                "its keys or by assuming its role, not both; remove one"
            )
        if self.role_arn is None and len(keys) < 2:
            missing = " and ".join(
                name for name in ("access_key", "secret_key") if getattr(self, name) is None
            )
            raise ValueError(
                f"{missing}: missing; give access_key and secret_key (${{VAR}} references), "
                "or role_arn (an IAM role the customer lets the deployment assume)"
            )
        return self

    @model_validator(mode="after")
    def _hour_markers_need_hourly_windows(self) -> "EventExportConfig":
        if self.completion == "hour" and self.frequency > 60:
            raise ValueError(
                f"completion: hour needs windows of at most 60 minutes (frequency is "
                f"{self.frequency}): use completion: day"
            )
        return self

    @model_validator(mode="after")
    def _kms_key_with_kms(self) -> "EventExportConfig":
        if self.sse == "aws:kms" and not self.kms_key_id:
            raise ValueError(
                "kms_key_id: is required with sse: aws:kms (the customer's key: its id, ARN "
                "or alias/NAME)"
            )
        if self.kms_key_id is not None and self.sse != "aws:kms":
            raise ValueError("kms_key_id: is used with sse: aws:kms only; set sse or remove it")
        return self

    @field_validator("role_arn")
    @classmethod
    def _role_arn(cls, value: str | None) -> str | None:
        if value is not None and not _ROLE_ARN_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not an IAM role ARN such as arn:aws:iam::123456789012:role/NAME"
            )
        return value

    @field_validator("kms_key_id")
    @classmethod
    def _kms_key_id(cls, value: str | None) -> str | None:
        if value is not None and not _KMS_KEY_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a KMS key id, key ARN or alias (alias/NAME): no spaces, at "
                "most 2,048 characters"
            )
        return value

    @field_validator("columns", mode="before")
    @classmethod
    def _columns_listed(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple) or not value:
            raise ValueError("must be a non-empty list of column names")
        if not all(isinstance(name, str) for name in value):
            raise ValueError("must be a list of column names (strings)")
        twice = sorted({name for name in value if list(value).count(name) > 1})
        if twice:
            raise ValueError(f"names {', '.join(twice)} more than once")
        return value

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
        is_reference = ENV_REF_RE.fullmatch(value) is not None
        if info.field_name == "secret_key" and not is_reference:
            # Never echo the value: it may be the secret itself.
            raise ValueError(
                "must be an ${ENV_VAR} reference such as ${ACME_AWS_SECRET_ACCESS_KEY}, "
                "never a literal secret"
            )
        if "${" in value and not is_reference:
            raise ValueError("must be exactly one ${ENV_VAR} reference, e.g. ${ACME_AWS_KEY_ID}")
        if not is_reference and not fit_for_a_header(value):
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
    # Where the customer hears that delivery broke and healed (a webhook; docs/operations.md).
    notify: "NotifyConfig | None" = None

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
            if export.role_arn is not None:
                continue  # no keys: the deployment's own principal assumes the role
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

    @model_validator(mode="after")
    def _known_columns(self) -> "IntegrationConfig":
        # The schema's columns per event type: the source's registry (no connection).
        from affise_s3_assets.source.event_types import EVENT_COLUMNS

        for event_type, export in self.exports():
            unknown = [name for name in export.columns if name not in EVENT_COLUMNS[event_type]]
            if unknown:
                raise ValueError(
                    f"{event_type}.columns: {', '.join(unknown)}: not a column of {event_type} "
                    f"(its columns: {', '.join(EVENT_COLUMNS[event_type])})"
                )
        return self

    @model_validator(mode="after")
    def _notify_is_its_own(self) -> "IntegrationConfig":
        # A webhook is an outbound request: were any variable allowed, a block could send the
        # deployment's secrets, or another customer's, to a URL of its choosing.
        if self.notify is None:
            return self
        wanted = notify_variables(self.name)
        for field_name, variable in zip(("url", "secret"), wanted, strict=True):
            named = env_reference_name(getattr(self.notify, field_name))
            if named != variable:
                raise ValueError(
                    f"notify.{field_name}: must be ${{{variable}}}, not "
                    f"{'${' + named + '}' if named else 'a literal'}: a webhook's URL and "
                    "signing secret are named for its integration"
                )
        return self

    def exports(self) -> list[tuple[EventType, EventExportConfig]]:
        """The configured (event type, export) pairs, clicks first."""
        pairs = [(event_type, getattr(self, event_type)) for event_type in EVENT_TYPES]
        return [(event_type, export) for event_type, export in pairs if export is not None]


class NotifyConfig(BaseModel):
    """An integration's webhook: a small signed JSON event when a destination starts failing
    with a permanent error, a daily reminder while it stays broken, and when it heals."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # `${<NAME>_NOTIFY_URL}`: the URL may carry a token.
    url: str
    # `${<NAME>_NOTIFY_SECRET}`: the HMAC key the receiver checks each event's signature with.
    secret: str

    @field_validator("url", "secret", mode="before")
    @classmethod
    def _reference(cls, value: Any) -> Any:
        if not isinstance(value, str) or ENV_REF_RE.fullmatch(value) is None:
            # Never echo the value: it may be a secret.
            raise ValueError("must be a ${ENV_VAR} reference")
        return value


def notify_variables(name: str) -> tuple[str, str]:
    """The variables an integration's webhook URL and signing secret are read from:
    acme -> ACME_NOTIFY_URL, ACME_NOTIFY_SECRET."""
    return f"{name.upper()}_NOTIFY_URL", f"{name.upper()}_NOTIFY_SECRET"


IntegrationConfig.model_rebuild()


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


def describe_error(error: dict[str, Any], raw: Any) -> str:
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


Settings = TypeVar("Settings", Lateness, Reconciliation)
