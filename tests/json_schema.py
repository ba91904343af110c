"""The part of JSON Schema docs/manifest.schema.json uses, to check documents against it in
tests without a dependency: type, const, enum, required, properties, additionalProperties,
items, minItems, minimum, pattern. Returns the problems found, each with its path."""

import re
from typing import Any

TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
}


def problems(document: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    found: list[str] = []
    kind = schema.get("type")
    if kind and (
        not isinstance(document, TYPES[kind]) or (kind == "integer" and isinstance(document, bool))
    ):
        return [f"{path}: not of type {kind}"]
    if "const" in schema and document != schema["const"]:
        found.append(f"{path}: is not {schema['const']!r}")
    if "enum" in schema and document not in schema["enum"]:
        found.append(f"{path}: not one of {schema['enum']}")
    if "pattern" in schema and not re.search(schema["pattern"], document):
        found.append(f"{path}: does not match {schema['pattern']}")
    if "minimum" in schema and document < schema["minimum"]:
        found.append(f"{path}: below {schema['minimum']}")
    if "minItems" in schema and len(document) < schema["minItems"]:
        found.append(f"{path}: fewer than {schema['minItems']} items")
    if isinstance(document, dict):
        properties = schema.get("properties", {})
        required = schema.get("required", ())
        found += [f"{path}: {name} missing" for name in required if name not in document]
        if schema.get("additionalProperties") is False:
            found += [f"{path}: {name} not allowed" for name in document if name not in properties]
        for name, value in document.items():
            if name in properties:
                found += problems(value, properties[name], f"{path}.{name}")
    if isinstance(document, list) and "items" in schema:
        for index, item in enumerate(document):
            found += problems(item, schema["items"], f"{path}[{index}]")
    return found
