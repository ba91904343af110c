"""`affise-s3`: the tools of the people who set integrations up. Knows the config's rules
(config.py), not the definitions; never prints a secret value.

    affise-s3 validate [FILE]     every problem of the file at once; exit 1 if any
    affise-s3 check-connection NAME [--event-type TYPE] [--file FILE] [--state-dir DIR]
                                  write a probe object with that integration's own
                                  credentials; say what fails in words to act on (TYPE:
                                  clicks, conversions or conversion_updates)
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from affise_s3_assets.config import EVENT_TYPES, apply_integrations, integrations_path
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


def check_connections(
    path: Path, name: str, event_type: str | None, state: Path | None = None
) -> int:
    """Check each export of integration `name` (or only `event_type`); 0 when all work. With
    the deployment's `state` directory, an export it keeps delivering under its last applied
    config is checked as it delivers, as `validate` judges it."""
    from affise_s3_assets.connection_check import check_connection
    from affise_s3_assets.s3 import request_deadline
    from affise_s3_assets.targets import build_export_targets

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"{path}: cannot be read: {exc.strerror}", file=sys.stderr)
        return 1
    last_good = read_last_good(state) if state is not None else None
    applied = apply_integrations(text, source=str(path), last_good=last_good)
    if applied.file_error:
        # Nothing of the file would be applied: checking what the deployment kept instead
        # would pass for a check of the file.
        print(applied.file_error.split("; nothing in it was applied")[0])
        return 1
    mine = [p for p in applied.problems if p.startswith(f"integration {name!r}:")]
    targets = [
        t
        for t in build_export_targets(applied.integrations)
        if t.integration == name and event_type in (None, t.event_type)
    ]
    for problem in mine:
        print(problem)
    if not targets:
        what = f"no {event_type} export" if event_type else "no export"
        print(f"integration {name!r}: {what} to check in {path}")
        return 1
    failed = False
    for target in targets:
        # A check answers within seconds, whatever the deliveries' deadline.
        result = check_connection(target.destination, deadline=min(30.0, request_deadline()))
        failed |= not result.ok
        print(f"integration {name!r} {target.event_type}: {result.message}")
    return 1 if failed or mine else 0


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=state_dir(),
        help="the deployment's AFFISE_STATE_DIR (default: $AFFISE_STATE_DIR), for its last "
        "applied config",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="affise-s3", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help="check an integrations file against every rule")
    check.add_argument(
        "file", nargs="?", type=Path, help="default: $AFFISE_INTEGRATIONS, then integrations.yaml"
    )
    _add_state_dir(check)
    probe = commands.add_parser(
        "check-connection", help="write a probe object with an integration's own credentials"
    )
    probe.add_argument("name", help="the integration's name")
    probe.add_argument("--event-type", choices=list(EVENT_TYPES))
    _add_state_dir(probe)
    probe.add_argument(
        "--file", type=Path, help="default: $AFFISE_INTEGRATIONS, then integrations.yaml"
    )
    options = parser.parse_args(argv)
    if options.command == "validate":
        return validate(options.file or integrations_path(), options.state_dir)
    if options.command == "check-connection":
        return check_connections(
            options.file or integrations_path(), options.name, options.event_type, options.state_dir
        )
    parser.error(f"unknown command {options.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
