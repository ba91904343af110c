"""`affise-s3`: the tools of the people who set integrations up. Knows the config's rules
(config.py), not the definitions; never prints a secret value.

    affise-s3 validate [FILE]     every problem of the file at once; exit 1 if any
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from affise_s3_assets.config import apply_integrations, integrations_path
from affise_s3_assets.live_config import read_last_good, state_dir


def validate(path: Path, state: Path | None = None) -> int:
    """Print every problem of the file, one per line as `integration '<name>': <field>: <rule>`
    (collisions and duplicate keys included); 0 when there is none. With the deployment's
    state directory, judged as the deployment would: an export already delivering keeps its
    start, and a collision is decided for the one that owns the folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"{path}: cannot be read: {exc.strerror}", file=sys.stderr)
        return 1
    last_good = read_last_good(state) if state is not None else None
    applied = apply_integrations(text, source=str(path), last_good=last_good)
    if applied.file_error:
        # The file as a whole (YAML, a key given twice): the live deployment keeps its last
        # good integrations, so the sensor's wording about them is left out here.
        print(applied.file_error.split("; nothing in it was applied")[0])
        return 1
    for problem in applied.problems:
        print(problem)
    if applied.problems:
        print(f"{path}: {len(applied.problems)} problem(s)", file=sys.stderr)
        return 1
    exports = sum(len(i.exports()) for i in applied.integrations)
    print(f"{path}: ok, {len(applied.integrations)} integrations, {exports} exports")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="affise-s3", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help="check an integrations file against every rule")
    check.add_argument(
        "file", nargs="?", type=Path, help="default: $AFFISE_INTEGRATIONS, then integrations.yaml"
    )
    check.add_argument(
        "--state-dir",
        type=Path,
        default=state_dir(),
        help="the deployment's AFFISE_STATE_DIR (default: $AFFISE_STATE_DIR), for its last "
        "applied config",
    )
    options = parser.parse_args(argv)
    if options.command == "validate":
        return validate(options.file or integrations_path(), options.state_dir)
    parser.error(f"unknown command {options.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
