"""Filtering and serialization: polars frames in, deterministic gzipped CSV chunks out.

Knows neither DuckDB nor S3, so the loader and the delivery can change independently.
"""

import io
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import polars as pl

# File timestamps carry whole seconds; the window itself was selected at full precision.
CSV_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# zlib's gzip wrapper (wbits 16+15) writes mtime 0 and no file name: the same rows give the
# same bytes, whenever and wherever they are compressed.
_GZIP_WBITS = 31


def filter_events(
    frames: Iterable[pl.DataFrame],
    affiliates: Sequence[int] = (),
    advertisers: Sequence[str] = (),
) -> Iterator[pl.DataFrame]:
    """Keep rows whose affiliate is listed AND whose advertiser is listed; an empty list = all."""
    conditions = []
    if affiliates:
        conditions.append(pl.col("affiliate_id").is_in(list(affiliates)))
    if advertisers:
        conditions.append(pl.col("advertiser_id").is_in(list(advertisers)))
    for frame in frames:
        yield frame.filter(*conditions) if conditions else frame


def csv_header(columns: Sequence[str]) -> bytes:
    return (",".join(columns) + "\n").encode()


def csv_bytes(frame: pl.DataFrame) -> bytes:
    """RFC 4180 rows without header: NULL is an empty field, an empty string is `""`."""
    buffer = io.BytesIO()
    frame.write_csv(
        buffer,
        include_header=False,
        separator=",",
        quote_char='"',
        line_terminator="\n",
        datetime_format=CSV_DATETIME_FORMAT,
        null_value="",
        quote_style="necessary",
    )
    return buffer.getvalue()


class GzipCsvBody:
    """An iterable of gzip chunks: header line, then each frame's rows, compressed as it goes.

    Only one frame and its compressed output are in memory at a time. The counters are final
    once iteration has finished.
    """

    def __init__(
        self, frames: Iterable[pl.DataFrame], columns: Sequence[str], compression_level: int = 6
    ) -> None:
        self._frames = frames
        self._columns = tuple(columns)
        self._level = compression_level
        self.rows = 0
        self.csv_bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        compressor = zlib.compressobj(self._level, zlib.DEFLATED, _GZIP_WBITS)
        header = csv_header(self._columns)
        self.csv_bytes = len(header)
        chunk = compressor.compress(header)
        if chunk:
            yield chunk
        for frame in self._frames:
            if frame.columns != list(self._columns):
                raise ValueError(f"frame columns {frame.columns} differ from {self._columns}")
            if frame.height == 0:
                continue
            data = csv_bytes(frame)
            self.rows += frame.height
            self.csv_bytes += len(data)
            chunk = compressor.compress(data)
            if chunk:
                yield chunk
        yield compressor.flush()

    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows, "csv_bytes": self.csv_bytes}
