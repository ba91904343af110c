"""An independent, strict RFC 4180 reader for the delivered files.

It keeps what a generic CSV reader loses: whether a field was quoted, so an empty unquoted
field (NULL) and `""` (empty string) stay different. Anything not RFC 4180 raises.
"""


def read_rfc4180(text: str) -> list[list[str | None]]:
    rows: list[list[str | None]] = []
    row: list[str | None] = []
    i, n = 0, len(text)
    if n == 0 or not text.endswith("\n"):
        raise ValueError("a CSV file must end with a line feed")
    while i < n:
        if text[i] == '"':
            i += 1
            value = []
            while True:
                j = text.find('"', i)
                if j < 0:
                    raise ValueError("unterminated quoted field")
                value.append(text[i:j])
                if j + 1 < n and text[j + 1] == '"':
                    value.append('"')
                    i = j + 2
                    continue
                i = j + 1
                break
            field: str | None = "".join(value)
        else:
            j = i
            while j < n and text[j] not in ",\n":
                if text[j] in '"\r':
                    raise ValueError(f"bare {text[j]!r} in an unquoted field at {j}")
                j += 1
            field = text[i:j] or None
            i = j
        row.append(field)
        if i >= n:
            raise ValueError("missing final line feed")
        if text[i] == ",":
            i += 1
        elif text[i] == "\n":
            rows.append(row)
            row = []
            i += 1
        else:
            raise ValueError(f"unexpected {text[i]!r} after a quoted field at {i}")
    return rows
