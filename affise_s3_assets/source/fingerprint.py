"""What the source holds for one target's window, as a fingerprint: its rows and the sum of
their hashes (values hashed as the schema types them, whichever source declared them), so a
row added, removed or changed changes it. The query that computes them is `SourceRead`'s.
"""

from dataclasses import dataclass

from affise_s3_assets.config.schema import EventType
from affise_s3_assets.source.event_types import EVENT_COLUMNS, TYPED_COLUMNS

FilterKey = tuple[tuple[int, ...], tuple[str, ...]]  # (affiliates, advertisers); () takes all


# (window, affiliate, advertiser) groups one fingerprint query aggregates at most: well within
# a 16 MB memory_limit (docs/design.md, "Tuning choices").
FINGERPRINT_GROUPS = 40_000


# Values hashed as the schema types them, whatever a source declares: a Parquet file's
# TIMESTAMP_NS or BIGINT would hash otherwise than the DuckDB file's types.
_CANONICAL: dict[str, str] = {
    "instant": "epoch_us({})",
    "integer": "{}::BIGINT",
    "boolean": "{}::BOOLEAN",
    "decimal": "{}::DECIMAL(18,4)",
}


def canonical_hash(event_type: EventType, alias: str = "") -> str:
    """The SQL hashing one row of `event_type`: every column, as the schema types it."""
    prefix = f"{alias}." if alias else ""
    values = [
        _CANONICAL.get(TYPED_COLUMNS.get(column, ""), "{}::VARCHAR").format(f'{prefix}"{column}"')
        for column in EVENT_COLUMNS[event_type]
    ]
    return f"hash({', '.join(values)})"


# DuckDB's hash() is 64 bits: a window's digest is the sum of its rows' hashes modulo this.
DIGEST_MODULUS = 2**64


@dataclass(frozen=True)
class Fingerprint:
    """What the source holds for one target's window: its rows, and a digest of their content
    (the sum of each row's hash, so a row added, removed or changed changes it)."""

    rows: int
    digest: int
    scheme: str  # how the digest was computed: digests of different schemes do not compare

    def text(self) -> str:
        return f"{self.scheme}:{self.digest:016x}"

    @classmethod
    def parse(cls, rows: int, text: str) -> "Fingerprint":
        scheme, _, digest = text.rpartition(":")
        return cls(rows, int(digest, 16), scheme)

    def differs_from(self, other: "Fingerprint") -> bool:
        """Whether the window's content differs; by row count alone across schemes."""
        if self.scheme != other.scheme:
            return self.rows != other.rows
        return (self.rows, self.digest) != (other.rows, other.digest)
