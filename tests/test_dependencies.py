"""Every distribution the package imports is one it declares (pyproject.toml): the runtime
dependencies, or the `deploy` extra for the instance's storages. A module that works here only
because another package happens to pull its distribution in fails this test."""

import ast
import importlib.metadata
import re
import sys
import tomllib

from tests.conftest import ROOT

PACKAGE = ROOT / "affise_s3_assets"


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def imported_distributions() -> dict[str, set[str]]:
    """Distribution -> the package's modules importing it (top-level names, stdlib aside)."""
    owners = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "affise_s3_assets":
                    continue
                for distribution in owners.get(top, [top]):
                    module = str(path.relative_to(ROOT))
                    found.setdefault(distribution.lower().replace("_", "-"), set()).add(module)
    return found


def test_every_distribution_the_package_imports_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    declared |= {_name(r) for r in project["optional-dependencies"]["deploy"]}
    imported = imported_distributions()
    # Imported under a name of their own: PyYAML as `yaml`.
    assert {"dagster", "dagster-graphql", "polars", "duckdb", "boto3"} <= imported.keys()
    undeclared = {d: sorted(m) for d, m in imported.items() if d not in declared}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
