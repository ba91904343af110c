"""Reading integrations.yaml's text: YAML with duplicate keys refused (with both lines named),
messages that never quote a line (it may hold a secret), the file's top-level blocks, and
where the file is. Validates nothing: the rules are schema.py's.
"""

import os
from pathlib import Path
from typing import Any

import yaml

from affise_s3_assets.config import ConfigError

DEFAULT_INTEGRATIONS_PATH = Path(__file__).resolve().parents[2] / "integrations.yaml"


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


# The file's top-level blocks besides `integrations`: settings of the whole deployment, and
# the demo file's `demo:` (DemoDates).
SETTINGS_BLOCKS = ("lateness", "reconciliation", "demo")


def parse_file(text: str, source: str) -> tuple[list[Any], dict[str, Any]]:
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


def integrations_path() -> Path:
    return Path(os.environ.get("AFFISE_INTEGRATIONS") or DEFAULT_INTEGRATIONS_PATH)
