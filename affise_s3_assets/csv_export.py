"""Filtering and serialization: polars frames in, deterministic gzipped CSV chunks out.

Knows neither DuckDB nor S3, so the loader and the delivery can change independently.
"""

import contextlib
import fcntl
import io
import os
import queue
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import polars as pl
from isal import isal_zlib

# gzip wrapper (wbits 16+15): mtime 0 and no file name, so the same rows give the same bytes
# whenever and wherever they are compressed.
_GZIP_WBITS = 31
# Levels up to this one use ISA-L (about 9x zlib's speed at level 1, ratio close to zlib's 6);
# higher levels use zlib for the last few percent of size.
ISAL_MAX_LEVEL = 3
# ISA-L's output depends on how its input is cut into calls; feeding it fixed-size blocks
# makes the bytes depend on the rows only, not on batch sizes or on which path exported them.
# A window job holds up to one block of CSV per integration, so the block is small: 256 KiB
# compresses at 97% of 1 MiB's speed with the same ratio (64 KiB: 88%).
COMPRESS_BLOCK = 256 * 1024
# The pipe from polars' CSV writer to the compressor: larger than a block, fewer wake-ups.
PIPE_BYTES = 1024 * 1024
_T = TypeVar("_T")


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


def gzip_compressor(level: int) -> Compressor:
    """A streaming gzip compressor for `level` 1-9; same input and level, same bytes."""
    if not 1 <= level <= 9:
        raise ValueError(f"gzip level must be 1-9, got {level}")
    if level <= ISAL_MAX_LEVEL:
        return isal_zlib.compressobj(level, isal_zlib.DEFLATED, _GZIP_WBITS)
    return zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)


def filter_events(
    frames: Iterable[pl.DataFrame],
    affiliates: Sequence[int] = (),
    advertisers: Sequence[str] = (),
) -> Iterator[pl.DataFrame]:
    """Keep rows whose affiliate is listed AND whose advertiser is listed; an empty list = all."""
    conditions = event_filter(affiliates, advertisers)
    for frame in frames:
        yield frame.filter(conditions) if conditions is not None else frame


def event_filter(affiliates: Sequence[int] = (), advertisers: Sequence[str] = ()) -> pl.Expr | None:
    """The polars predicate of an integration's filters; None when it takes every row."""
    conditions = []
    if affiliates:
        conditions.append(pl.col("affiliate_id").is_in(list(affiliates)))
    if advertisers:
        conditions.append(pl.col("advertiser_id").is_in(list(advertisers)))
    if not conditions:
        return None
    return conditions[0] if len(conditions) == 1 else conditions[0] & conditions[1]


def filters_metadata(affiliates: Sequence[int], advertisers: Sequence[str]) -> dict[str, str]:
    """How an integration's filters are shown on its materializations: ids, or `all`."""
    return {
        "affiliates": ", ".join(map(str, affiliates)) or "all",
        "advertisers": ", ".join(advertisers) or "all",
    }


def csv_header(columns: Sequence[str]) -> bytes:
    return (",".join(columns) + "\n").encode()


def whole_second_text(frame: pl.DataFrame) -> pl.DataFrame:
    """Timestamps as `YYYY-MM-DD hh:mm:ss` text, sub-seconds cut.

    Cutting the ISO text is a third cheaper than polars' strftime-style datetime_format, and
    CSV writing is the most expensive stage of an export.
    """
    timestamps = [name for name, dtype in frame.schema.items() if isinstance(dtype, pl.Datetime)]
    if not timestamps:
        return frame
    return frame.with_columns(pl.col(timestamps).cast(pl.String).str.slice(0, 19))


def csv_bytes(frame: pl.DataFrame) -> bytes:
    """RFC 4180 rows without header: NULL is an empty field, an empty string is `""`."""
    buffer = io.BytesIO()
    write_csv_rows(frame, buffer)
    return buffer.getvalue()


def in_background(items: Iterable[_T], depth: int = 3) -> Iterator[_T]:
    """Iterate `items` in a worker thread, at most `depth` items ahead of the consumer.

    Reading the source and writing CSV (DuckDB and polars release the GIL) then overlaps with
    compression and upload in the consuming thread: two stages on two cores. The worker's
    exception is re-raised here; closing this generator early stops the worker.
    """
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as exc:
            put(("error", exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=work, name="csv-producer", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "item":
                yield value
            elif kind == "done":
                return
            else:
                raise value
    finally:
        stop.set()
        worker.join()


class GzipCsvEncoder:
    """The format: CSV in, gzip chunks out, header first. Both export paths go through it.

    The CSV stream is compressed in exact COMPRESS_BLOCK pieces, so the bytes depend on the
    rows alone. CSV arrives either pushed as bytes (`add`, the window job), where whole blocks
    are compressed straight from the caller's buffer, or read from a pipe into the block
    (`fill_from`, the asset path). The block grows only as far as it is filled: a window job
    holds one per integration.
    """

    def __init__(self, columns: Sequence[str], compression_level: int = 1) -> None:
        header = csv_header(columns)
        self._compressor = gzip_compressor(compression_level)
        self._block = bytearray(header)
        self._filled = len(header)
        self.rows = 0
        self.csv_bytes = len(header)

    def add(self, rows: int, data: bytes) -> Iterator[bytes]:
        """Compress `rows` rows of CSV; yields whatever compressed output is ready."""
        self.rows += rows
        self.csv_bytes += len(data)
        view = memoryview(data)
        while view:
            if self._filled == 0 and len(view) >= COMPRESS_BLOCK:
                chunk = self._compressor.compress(view[:COMPRESS_BLOCK])
                view = view[COMPRESS_BLOCK:]
            else:
                take = min(len(view), COMPRESS_BLOCK - self._filled)
                self._block[self._filled : self._filled + take] = view[:take]
                self._filled += take
                view = view[take:]
                chunk = self._full_block()
            if chunk:
                yield chunk

    def fill_from(self, source: io.RawIOBase) -> tuple[int, bytes]:
        """Read CSV from `source` straight into the block: (bytes read, 0 at end of file;
        compressed output, empty until a block is full)."""
        if len(self._block) < COMPRESS_BLOCK:
            self._block.extend(bytes(COMPRESS_BLOCK - len(self._block)))
        with memoryview(self._block) as block:
            read = source.readinto(block[self._filled :]) or 0
        self._filled += read
        self.csv_bytes += read
        return read, self._full_block()

    def _full_block(self) -> bytes:
        if self._filled < COMPRESS_BLOCK:
            return b""
        self._filled = 0
        return self._compressor.compress(self._block)

    def add_frame(self, frame: pl.DataFrame) -> Iterator[bytes]:
        if frame.height:
            yield from self.add(frame.height, csv_bytes(frame))

    def finish(self) -> bytes:
        with memoryview(self._block) as block:
            return self._compressor.compress(block[: self._filled]) + self._compressor.flush()

    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows, "csv_bytes": self.csv_bytes}


class GzipCsvBody:
    """Pull side: an iterable of gzip chunks for one window, header line first.

    polars writes each frame's CSV straight into a pipe and this side reads the pipe in exact
    COMPRESS_BLOCK pieces, so the CSV never exists as Python bytes: memory stays at a sorted
    slice, the pipe and one block whatever the window. Three threads overlap: read and sort
    (DuckDB, polars), write CSV (polars), compress (the consumer). `summary()` is final once
    iteration has finished.
    """

    def __init__(
        self, frames: Iterable[pl.DataFrame], columns: Sequence[str], compression_level: int = 1
    ) -> None:
        self._frames = frames
        self._columns = tuple(columns)
        self._encoder = GzipCsvEncoder(columns, compression_level)

    def _write_rows(self, pipe: io.RawIOBase, stop: threading.Event) -> None:
        frames = in_background(self._frames, depth=1)
        try:
            for frame in frames:
                if stop.is_set():
                    return
                if frame.columns != list(self._columns):
                    raise ValueError(f"frame columns {frame.columns} differ from {self._columns}")
                if frame.height:
                    write_csv_rows(frame, pipe)
                    self._encoder.rows += frame.height
        finally:
            frames.close()

    def __iter__(self) -> Iterator[bytes]:
        encoder = self._encoder
        stop = threading.Event()
        failure: list[BaseException] = []
        read_fd, write_fd = os.pipe()
        # Each end is owned by a file object from here on, so every path closes both.
        reader = open(read_fd, "rb", buffering=0)  # noqa: SIM115 - closed below, on every path
        write_end = open(write_fd, "wb", buffering=0)  # noqa: SIM115 - closed by the writer
        _widen_pipe(write_fd)

        def write() -> None:
            try:
                with write_end:
                    self._write_rows(write_end, stop)
            except BaseException as exc:
                failure.append(exc)

        writer = threading.Thread(target=write, name="csv-writer", daemon=True)
        with reader:
            try:
                writer.start()
            except BaseException:
                write_end.close()
                raise
            try:
                while True:
                    read, chunk = encoder.fill_from(reader)
                    if chunk:
                        yield chunk
                    if not read:
                        break  # EOF: the writer closed its end, finished or failed.
            finally:
                # Leaving early (the upload failed): the writer stops after its current frame,
                # and a write into the closed read end fails at once (broken pipe) instead of
                # blocking on a full pipe, so the join cannot hang.
                stop.set()
                reader.close()
                writer.join()
        if failure:
            raise failure[0]
        yield encoder.finish()

    @property
    def rows(self) -> int:
        return self._encoder.rows

    def summary(self) -> dict[str, Any]:
        return self._encoder.summary()


def write_csv_rows(frame: pl.DataFrame, target: io.RawIOBase | io.BytesIO) -> None:
    """RFC 4180 rows without header into `target`: NULL is an empty field, "" is `""`."""
    whole_second_text(frame).write_csv(
        target,
        include_header=False,
        separator=",",
        quote_char='"',
        line_terminator="\n",
        null_value="",
        quote_style="necessary",
    )


def _widen_pipe(fd: int) -> None:
    """Grow the pipe to PIPE_BYTES where Linux allows it (default 64 KiB): fewer switches."""
    set_pipe_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_pipe_size is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, set_pipe_size, PIPE_BYTES)
