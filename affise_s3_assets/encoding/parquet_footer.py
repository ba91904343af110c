"""A Parquet file's footer (FileMetaData, in Thrift's compact protocol), read and written back:
what joining one-row-group Parquet files into one file needs (encoding/parquet.py). Values are
kept as read, field by field, so what is written back is what was read except the fields
changed here: the row groups' positions and ordinals, the file's row count and row groups, and
no page index (its page positions would be those of the file it was written in).

Knows the Parquet format's footer (parquet.thrift: FileMetaData, RowGroup, ColumnChunk,
ColumnMetaData); nothing of polars, DuckDB or S3.
"""

from dataclasses import dataclass
from typing import Any

MAGIC = b"PAR1"

# Thrift compact protocol's types (a struct field's bool is its type: TRUE or FALSE).
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(
    13
)

# parquet.thrift's field ids used here.
FILE_NUM_ROWS = 3
FILE_ROW_GROUPS = 4
FILE_KEY_VALUE_METADATA = 5
FILE_ENCRYPTION_ALGORITHM = 8
GROUP_COLUMNS = 1
GROUP_NUM_ROWS = 3
GROUP_FILE_OFFSET = 5
GROUP_ORDINAL = 7
CHUNK_FILE_OFFSET = 2
CHUNK_META_DATA = 3
# The page index (offset index, column index: their positions and lengths), written after the
# column chunks; and a chunk's encryption.
CHUNK_PAGE_INDEX = (4, 5, 6, 7)
CHUNK_ENCRYPTION = (8, 9)
META_TOTAL_COMPRESSED_SIZE = 7
META_DATA_PAGE_OFFSET = 9
META_DICTIONARY_PAGE_OFFSET = 11
META_BLOOM_FILTER_OFFSET = 14
# ColumnMetaData: data_page_offset, index_page_offset, dictionary_page_offset: each a position
# in the file.
META_OFFSETS = (9, 10, 11)


@dataclass
class Field:
    """One field of a struct: its id, its compact type, its value (None for a bool field,
    whose type is its value; a list/set is (element type, values); a struct, its fields)."""

    id: int
    kind: int
    value: Any


Struct = list[Field]


class FooterError(ValueError):
    """Bytes that are not a Parquet footer this module reads."""


class _Reader:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.at = 0

    def byte(self) -> int:
        if self.at >= len(self.data):
            raise FooterError("a Parquet footer ends early")
        value = self.data[self.at]
        self.at += 1
        return value

    def varint(self) -> int:
        shift = result = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    def zigzag(self) -> int:
        number = self.varint()
        return (number >> 1) ^ -(number & 1)

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise FooterError("a Parquet footer ends early")
        value = bytes(self.data[self.at : self.at + size])
        self.at += size
        return value

    def value(self, kind: int) -> Any:
        if kind in (_TRUE, _FALSE, _BYTE):  # a bool in a list is one byte
            return self.byte()
        if kind in (_I16, _I32, _I64):
            return self.zigzag()
        if kind == _DOUBLE:
            return self.take(8)
        if kind == _BINARY:
            return self.take(self.varint())
        if kind in (_LIST, _SET):
            head = self.byte()
            size, element = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            return (element, [self.value(element) for _ in range(size)])
        if kind == _STRUCT:
            return self.struct()
        # FileMetaData holds no map.
        raise FooterError(f"a Thrift compact type this footer reader does not know: {kind}")

    def struct(self) -> Struct:
        fields: Struct = []
        last = 0
        while True:
            head = self.byte()
            if head == _STOP:
                return fields
            kind, delta = head & 0x0F, head >> 4
            field_id = last + delta if delta else self.zigzag()
            value = None if kind in (_TRUE, _FALSE) else self.value(kind)
            fields.append(Field(field_id, kind, value))
            last = field_id


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def varint(self, number: int) -> None:
        while True:
            byte = number & 0x7F
            number >>= 7
            if number:
                self.out.append(byte | 0x80)
            else:
                self.out.append(byte)
                return

    def zigzag(self, number: int) -> None:
        self.varint((number << 1) ^ (number >> 63))

    def value(self, kind: int, value: Any) -> None:
        if kind in (_TRUE, _FALSE, _BYTE):
            self.out.append(value)
        elif kind in (_I16, _I32, _I64):
            self.zigzag(value)
        elif kind == _DOUBLE:
            self.out += value
        elif kind == _BINARY:
            self.varint(len(value))
            self.out += value
        elif kind in (_LIST, _SET):
            element, values = value
            if len(values) < 15:
                self.out.append(len(values) << 4 | element)
            else:
                self.out.append(0xF0 | element)
                self.varint(len(values))
            for item in values:
                self.value(element, item)
        elif kind == _STRUCT and isinstance(value, bytes):
            self.out += value  # a struct written already (`struct_bytes`)
        elif kind == _STRUCT:
            self.struct(value)
        else:
            raise FooterError(f"a Thrift compact type this footer writer does not know: {kind}")

    def struct(self, fields: Struct) -> None:
        last = 0
        for field in fields:
            delta = field.id - last
            if 0 < delta <= 15:
                self.out.append(delta << 4 | field.kind)
            else:
                self.out.append(field.kind)
                self.zigzag(field.id)
            if field.kind not in (_TRUE, _FALSE):
                self.value(field.kind, field.value)
            last = field.id
        self.out.append(_STOP)


def split_file(data: bytes | memoryview) -> tuple[memoryview, Struct]:
    """A whole Parquet file's bytes: what lies between its magic and its footer (the column
    chunks, and any page index), and its footer read."""
    view = memoryview(data)
    if len(view) < 12 or view[:4] != MAGIC or view[-4:] != MAGIC:
        raise FooterError("not a Parquet file")
    length = int.from_bytes(view[-8:-4], "little")
    start = len(view) - 8 - length
    if start < 4:
        raise FooterError("a Parquet footer longer than its file")
    reader = _Reader(view[start:-8])
    return view[4:start], reader.struct()


def field(fields: Struct, field_id: int) -> Field | None:
    return next((item for item in fields if item.id == field_id), None)


def _required(fields: Struct, field_id: int, what: str) -> Any:
    found = field(fields, field_id)
    if found is None:
        raise FooterError(f"a Parquet footer's {what} is missing")
    return found.value


def only_row_group(footer: Struct) -> Struct:
    """The one RowGroup of a one-row-group file's footer; refuses an encrypted file."""
    if field(footer, FILE_ENCRYPTION_ALGORITHM) is not None:
        raise FooterError("an encrypted Parquet file")
    groups = _required(footer, FILE_ROW_GROUPS, "row groups")[1]
    if len(groups) != 1:
        raise FooterError(f"a file of {len(groups)} row groups where one was written")
    return groups[0]


def _chunks(group: Struct) -> list[Struct]:
    chunks = _required(group, GROUP_COLUMNS, "column chunks")[1]
    if not chunks:
        raise FooterError("a row group without columns")
    return chunks


def chunks_end(group: Struct, footer_start: int) -> int:
    """Where what belongs to the column chunks of `group`, its file's one row group, ends:
    at the page index that follows them (its offset and column indexes), else at the footer.
    Refuses a chunk that is encrypted or has a bloom filter (neither is written here), and an
    index that begins among the chunks."""
    index, data = footer_start, 0
    for chunk in _chunks(group):
        if any(item.id in CHUNK_ENCRYPTION for item in chunk):
            raise FooterError("an encrypted column chunk")
        for item in chunk:
            if item.id in (CHUNK_PAGE_INDEX[0], CHUNK_PAGE_INDEX[2]):
                index = min(index, item.value)
        meta = _required(chunk, CHUNK_META_DATA, "column metadata")
        if field(meta, META_BLOOM_FILTER_OFFSET) is not None:
            raise FooterError("a column chunk with a bloom filter")
        dictionary = field(meta, META_DICTIONARY_PAGE_OFFSET)
        start = _required(meta, META_DATA_PAGE_OFFSET, "data page offset")
        if dictionary is not None:
            start = min(start, dictionary.value)
        data = max(data, start + _required(meta, META_TOTAL_COMPRESSED_SIZE, "compressed size"))
    if not len(MAGIC) <= data <= index <= footer_start:
        raise FooterError("column chunks and a page index that overlap or leave their file")
    return index


def schema_only(footer: Struct) -> Struct:
    """`footer` without its row groups (an empty list in their place): what `joined_footer`
    takes from it, without holding a row group's parsed fields for the object's lifetime."""
    return [
        Field(item.id, _LIST, (_STRUCT, [])) if item.id == FILE_ROW_GROUPS else item
        for item in footer
    ]


def row_groups(footer: Struct) -> list[Struct]:
    return list(_required(footer, FILE_ROW_GROUPS, "row groups")[1])


def rows_of(group: Struct) -> int:
    return int(_required(group, GROUP_NUM_ROWS, "row count"))


def moved(group: Struct, by: int, ordinal: int) -> bytes:
    """`group` (the RowGroup of a file's column chunks, without what follows them) as it is
    in another file: every position it holds moved `by` bytes, its ordinal, if it says one,
    set to `ordinal`, and no page index (the index's own page positions are those of the file
    it was written in). Written as Thrift bytes: an object's footer keeps a row group's ~2 KB,
    not its parsed fields."""

    def shift(fields: Struct, ids: tuple[int, ...]) -> None:
        for item in fields:
            if item.id in ids:
                item.value += by

    for chunk in _chunks(group):
        chunk[:] = [item for item in chunk if item.id not in CHUNK_PAGE_INDEX]
        shift(chunk, (CHUNK_FILE_OFFSET,))
        shift(_required(chunk, CHUNK_META_DATA, "column metadata"), META_OFFSETS)
    shift(group, (GROUP_FILE_OFFSET,))
    order = field(group, GROUP_ORDINAL)
    if order is not None:
        order.value = ordinal
    return footer_bytes(group)


def joined_footer(head: Struct, groups: list[bytes], rows: int) -> bytes:
    """The footer of a file of `groups` (RowGroups written by `moved`) holding `rows` rows,
    taking everything else (schema, writer, column orders) from `head`, a footer of a file of
    the same schema; without the writer's key-value metadata, whose Arrow schema is its own
    in-memory types rather than the file's. Its length and the magic follow it."""
    fields: Struct = []
    for item in head:
        if item.id == FILE_KEY_VALUE_METADATA:
            continue
        if item.id == FILE_NUM_ROWS:
            item = Field(item.id, item.kind, rows)
        elif item.id == FILE_ROW_GROUPS:
            item = Field(item.id, _LIST, (_STRUCT, groups))
        fields.append(item)
    footer = footer_bytes(fields)
    return footer + len(footer).to_bytes(4, "little") + MAGIC


def footer_bytes(footer: Struct) -> bytes:
    """`footer` (or any struct of one) written back as Thrift's compact protocol."""
    writer = _Writer()
    writer.struct(footer)
    return bytes(writer.out)
