"""Filtering and serialization: polars frames in, deterministic gzipped CSV chunks out.

Knows neither DuckDB nor S3, so the loader and the delivery can change independently.
"""

import io
import mmap
import os
import queue
import tempfile
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import polars as pl
from isal import isal_zlib

# gzip wrapper (wbits 16+15): mtime 0 and no file name, so the same rows give the same bytes
# whenever and wherever they are compressed.
_GZIP_WBITS = 31
# Levels up to this one use ISA-L (several times zlib's speed, at a ratio close to zlib's 6);
# higher levels use zlib for the last few percent of size (docs/design.md, "Tuning choices").
ISAL_MAX_LEVEL = 3
# ISA-L's output depends on how its input is cut into calls; feeding it fixed-size blocks
# makes the bytes depend on the rows only, not on batch sizes or on which path exported them.
# A window job holds up to one block of CSV per integration, so the block is small, and
# still about as fast as a large one (docs/design.md, "Tuning choices").
COMPRESS_BLOCK = 256 * 1024
_T = TypeVar("_T")


class Compressor(Protocol):
    def compress(self, data: bytes | memoryview, /) -> bytes: ...
    def flush(self) -> bytes: ...


def gzip_compressor(level: int) -> Compressor:
    """A streaming gzip compressor for `level` 1-9; same input and level, same bytes."""
    if not 1 <= level <= 9:
        raise ValueError(f"gzip level must be 1-9, got {level}")
    if level <= ISAL_MAX_LEVEL:
        return isal_zlib.compressobj(level, isal_zlib.DEFLATED, _GZIP_WBITS)
    return zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)


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


def csv_header(columns: Sequence[str]) -> bytes:
    return (",".join(columns) + "\n").encode()


def whole_second_text(frame: pl.DataFrame) -> pl.DataFrame:
    """Timestamps as `YYYY-MM-DD hh:mm:ss` text, sub-seconds cut.

    polars' strftime of the column is cheaper than its ISO text cut to length, and than the
    CSV writer's datetime_format (docs/design.md, "Tuning choices"); the text is the same.
    """
    timestamps = [name for name, dtype in frame.schema.items() if isinstance(dtype, pl.Datetime)]
    if not timestamps:
        return frame
    return frame.with_columns(pl.col(timestamps).dt.strftime("%Y-%m-%d %H:%M:%S"))


def csv_bytes(frame: pl.DataFrame) -> memoryview:
    """RFC 4180 rows without header: NULL is an empty field, an empty string is `""`.

    A view of the buffer polars wrote them to, not a copy of it: the text of a batch is
    megabytes, and copying it cost a tenth of the CSV stage.
    """
    buffer = io.BytesIO()
    write_csv_rows(frame, buffer)
    return buffer.getbuffer()


class CsvText:
    """Memory that batch after batch of CSV is written to, and read from, in place.

    polars writes to a file descriptor itself, off the GIL; to a Python file object (a
    BytesIO) it hands each chunk as a new `bytes` that is copied again into the target,
    whose memory is fresh each batch. Here it writes from the start of an anonymous in-memory
    file, whose pages stay allocated from one batch to the next, and the text is read through
    a mapping of that file kept as long as it is large enough: no copy and no page fault per
    batch (docs/design.md, "Tuning choices").
    """

    def __init__(self) -> None:
        self._file = memory_file()
        self._map: mmap.mmap | None = None
        self.view = memoryview(b"")

    def write(self, frame: pl.DataFrame) -> memoryview:
        """`frame`'s rows as `write_csv_rows` writes them; valid until the next write."""
        self.view.release()
        fd = self._file.fileno()
        os.lseek(fd, 0, os.SEEK_SET)
        write_csv_rows(frame, self._file)
        size = os.lseek(fd, 0, os.SEEK_CUR)
        if self._map is None or len(self._map) < size:
            # Views of the old mapping keep it alive until they are gone; a mapping is never
            # empty.
            length = max(size, 2 * len(self._map) if self._map is not None else 0, 1)
            if os.fstat(fd).st_size < length:
                os.ftruncate(fd, length)
            self._map = mmap.mmap(fd, length, prot=mmap.PROT_READ)
        self.view = memoryview(self._map)[:size]
        return self.view


def memory_file(name: str = "affise-csv") -> io.FileIO:
    """An anonymous in-memory file (a memfd; elsewhere a temporary file) that polars writes
    to by its descriptor, off the GIL."""
    if hasattr(os, "memfd_create"):
        return open(os.memfd_create(name, os.MFD_CLOEXEC), "wb", buffering=0)
    return tempfile.TemporaryFile(buffering=0, prefix=f"{name}-")  # type: ignore[return-value]


class CsvTexts:
    """`CsvText`s for a producer whose text a consumer reads on another thread: each write
    takes one no batch still holds (or a new one), and `release` gives it back once the
    consumer is done with it. As many exist as batches are in flight at once."""

    def __init__(self) -> None:
        self._free: queue.SimpleQueue[CsvText] = queue.SimpleQueue()

    def write(self, frame: pl.DataFrame) -> CsvText:
        try:
            text = self._free.get_nowait()
        except queue.Empty:
            text = CsvText()
        text.write(frame)
        return text

    def release(self, text: CsvText) -> None:
        text.view.release()
        self._free.put(text)


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
    """The format: CSV in, gzip chunks out, header first. Every delivery goes through it.

    The CSV stream is compressed in exact COMPRESS_BLOCK pieces, so the bytes depend on the
    rows alone, not on how the window was batched. Whole blocks are compressed straight from
    the caller's buffer; the block grows only as far as it is filled: the export step holds
    one per integration.
    """

    file_format = "csv"
    compression = "gzip"

    def __init__(self, columns: Sequence[str], compression_level: int = 1) -> None:
        header = csv_header(columns)
        self._compressor = gzip_compressor(compression_level)
        self._block = bytearray(header)
        self._filled = len(header)
        self.rows = 0
        self.csv_bytes = len(header)

    def add(self, rows: int, data: bytes | memoryview) -> Iterator[bytes]:
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


def gzip_csv(
    frames: Iterable[pl.DataFrame], columns: Sequence[str], compression_level: int = 1
) -> Iterator[bytes]:
    """One object's gzip chunks for `frames`, header first: the encoding every delivery uses."""
    encoder = GzipCsvEncoder(columns, compression_level)
    text = CsvText()
    for frame in frames:
        if frame.height:
            yield from encoder.add(frame.height, text.write(frame))
    yield encoder.finish()


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
