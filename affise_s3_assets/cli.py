"""`affise-s3`: the tools of the people who set integrations up and operate them. Knows the
config's rules (config/schema.py); only `deliver` loads the definitions (delivery/by_hand.py). Never
prints a secret value.

    affise-s3 validate [FILE]     every problem of the file at once; exit 1 if any
    affise-s3 check-connection NAME [--event-type TYPE] [--file FILE] [--state-dir DIR]
                                  write a probe object with that integration's own
                                  credentials; say what fails in words to act on (TYPE:
                                  clicks, conversions or conversion_updates)
    affise-s3 external-id NAME [--principal ARN] [--file FILE] [--json]
                                  the integration's ExternalId, and the trust and
                                  permissions policies of the role its customer creates
    affise-s3 deliver ASSET... --from WINDOW [--to WINDOW] [--file FILE] [--state-dir DIR]
                                  deliver those windows of those exports now, by hand (e.g.
                                  affise/acme/clicks --from 2026-11-26-10:00 --to
                                  2026-11-26-11:45), on the instance of $DAGSTER_HOME
"""

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from affise_s3_assets.automation.live_config import apply_file, read_last_good, state_dir
from affise_s3_assets.config.apply import apply_integrations
from affise_s3_assets.config.reading import integrations_path
from affise_s3_assets.config.schema import DEMO_DAY_VARIABLE, EVENT_TYPES


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
    _note_roles(applied.integrations)
    return 0


def _note_roles(integrations: Sequence[Any]) -> None:
    """For exports through a role: the deployment's secret they need, when it is not set here
    (on stderr: the file itself is fine)."""
    from affise_s3_assets.assume_role import EXTERNAL_ID_KEY_VARIABLE

    roles = sorted({i.name for i in integrations for _, export in i.exports() if export.role_arn})
    if roles and not os.environ.get(EXTERNAL_ID_KEY_VARIABLE):
        print(
            f"note: {', '.join(roles)} deliver through a role (role_arn): the deployment "
            f"needs {EXTERNAL_ID_KEY_VARIABLE}, not set here; `affise-s3 external-id NAME` "
            "prints what each customer's role needs",
            file=sys.stderr,
        )


def check_connections(
    path: Path, name: str, event_type: str | None, state: Path | None = None
) -> int:
    """Check each export of integration `name` (or only `event_type`); 0 when all work. With
    the deployment's `state` directory, an export it keeps delivering under its last applied
    config is checked as it delivers, as `validate` judges it."""
    from affise_s3_assets.config.targets import build_export_targets
    from affise_s3_assets.delivery.connection_check import check_connection
    from affise_s3_assets.s3 import request_deadline

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


_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def external_id(name: str, principal: str | None, path: Path | None, as_json: bool) -> int:
    """Print integration `name`'s ExternalId, the trust policy its customer puts on their role
    (the delivering principal: `principal`, else the deployment's own, by STS
    GetCallerIdentity) and the role's permissions policy (each export's folder and KMS key
    when the integrations file has it, else placeholders). 1 when it cannot be told."""
    from affise_s3_assets.assume_role import (
        PolicyTarget,
        permissions_policy,
        trust_policy,
    )
    from affise_s3_assets.assume_role import external_id as derive
    from affise_s3_assets.config import ConfigError

    if not _NAME.fullmatch(name):
        print(f"{name!r} is not an integration name ([a-z][a-z0-9_]{{0,63}})", file=sys.stderr)
        return 1
    try:
        derived = derive(name)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if principal is None:
        principal = _deployment_principal()
        if principal is None:
            return 1
    targets = _policy_targets(name, path, PolicyTarget)
    trust = trust_policy(principal, derived)
    permissions = permissions_policy(targets)
    if as_json:
        document = {
            "integration": name,
            "external_id": derived,
            "trust_policy": trust,
            "permissions_policy": permissions,
        }
        print(json.dumps(document, indent=2))
        return 0
    where = f"its exports in {path}" if targets else "placeholders: <bucket>, <directory>"
    print(f"ExternalId of integration {name!r}: {derived}")
    print()
    print("Trust policy of the customer's role (Trust relationships):")
    print(json.dumps(trust, indent=2))
    print()
    print(f"Permissions policy of the role ({where}):")
    print(json.dumps(permissions, indent=2))
    print()
    print(
        "The customer creates the role in their account with both policies and sends its "
        "ARN (role_arn in integrations.yaml). A KMS key encrypting the objects (sse: aws:kms, "
        "or the bucket's default) must also allow the role kms:GenerateDataKey and kms:Decrypt "
        "in its key policy."
    )
    return 0


def _deployment_principal() -> str | None:
    import botocore.exceptions

    from affise_s3_assets.assume_role import deployment_principal

    try:
        principal = deployment_principal()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        print(
            "cannot tell the delivering principal from the deployment's AWS credentials "
            f"({type(exc).__name__}): give it with --principal ARN",
            file=sys.stderr,
        )
        return None
    if principal.path_unread is not None:
        print(
            f"warning: the trust policy below names the deployment's role as {principal.arn}, "
            f"without a path: its path could not be read ({principal.path_unread}; the "
            "deployment reads it with iam:GetRole on its own role, or from AWS_ROLE_ARN). "
            "AWS refuses a trust policy naming a role that has a path without it: if the "
            "role's ARN has a path (role/<path>/<name>), run again with --principal and "
            "that whole ARN",
            file=sys.stderr,
        )
    return principal.arn


def _policy_targets(name: str, path: Path | None, target_type: Any) -> list[Any]:
    """The integration's exports as written in the file, when it can be read and has them."""
    from affise_s3_assets.config.targets import build_export_targets

    if path is None or not path.is_file():
        return []
    applied = apply_integrations(path.read_text(encoding="utf-8"), source=str(path))
    return [
        target_type(
            t.destination.bucket,
            t.destination.directory,
            t.destination.region,
            t.destination.sse,
            t.destination.kms_key_id,
            t.destination.acl,
        )
        for t in build_export_targets(applied.integrations)
        if t.integration == name
    ]


def deliver(
    path: Path, asset_keys: Sequence[str], first: str, last: str | None, state: Path | None
) -> int:
    """Deliver windows `first` through `last` of the export assets named, as ranged runs of
    their window jobs executed here; 0 when every run succeeded. Nothing runs when any window
    asked for cannot be delivered (the reason is printed)."""
    import dagster as dg

    from affise_s3_assets.config.targets import build_export_targets, build_window_groups
    from affise_s3_assets.definitions import build_definitions
    from affise_s3_assets.delivery.by_hand import (
        RefusedDelivery,
        execute_manual_run,
        plan_manual_runs,
    )

    if not os.environ.get("DAGSTER_HOME"):
        print(
            "DAGSTER_HOME is not set: a delivery by hand is recorded on the deployment's "
            "instance, where its sensors and the UI see it",
            file=sys.stderr,
        )
        return 1
    # As the code server applies it: the deployment's last applied config itself while the
    # file is as it was then, else the file applied over it.
    applied = apply_file(path, read_last_good(state) if state is not None else None)
    if applied.file_error:
        print(applied.file_error.split("; nothing in it was applied")[0])
        return 1
    names = {key.split("/")[1] for key in asset_keys if key.count("/") == 2}
    for problem in applied.problems:
        if any(problem.startswith(f"integration {name!r}:") for name in names):
            print(problem)
    groups = build_window_groups(build_export_targets(applied.integrations), applied.lateness)
    try:
        runs = plan_manual_runs(groups, asset_keys, first, last)
    except RefusedDelivery as exc:
        print(f"nothing delivered: {exc}", file=sys.stderr)
        return 1
    defs = build_definitions(applied)
    instance = dg.DagsterInstance.get()
    failed = 0
    for run in runs:
        result = execute_manual_run(run, defs, instance)
        print(f"{run}: run {result.run_id} {'delivered' if result.success else 'FAILED'}")
        if not result.success:
            failed += 1
            for event in result.get_step_failure_events():
                print(f"  {event.step_failure_data.error.message.strip()}")
    if failed:
        print(f"{failed} of {len(runs)} runs failed", file=sys.stderr)
    return 1 if failed else 0


def _pinned_demo_day() -> None:
    """The demo day the instance of $DAGSTER_HOME keeps (`scripts/dev.sh` writes it there and
    gives it to its own processes), for a command run from another shell: the demo file's
    starts then move as the code server's do. An explicit AFFISE_DEMO_DAY wins."""
    home = os.environ.get("DAGSTER_HOME")
    if not home or os.environ.get(DEMO_DAY_VARIABLE):
        return
    pinned = Path(home) / "demo-day"
    if pinned.is_file():
        os.environ[DEMO_DAY_VARIABLE] = pinned.read_text(encoding="utf-8").strip()


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
    role = commands.add_parser(
        "external-id",
        help="an integration's ExternalId and the policies of the role its customer creates",
    )
    role.add_argument("name", help="the integration's name")
    role.add_argument(
        "--principal",
        metavar="ARN",
        help="the delivering principal (default: the deployment's own, by STS "
        "GetCallerIdentity of its AWS credentials; an assumed role's path from AWS_ROLE_ARN "
        "or IAM GetRole)",
    )
    role.add_argument(
        "--file", type=Path, help="default: $AFFISE_INTEGRATIONS, then integrations.yaml"
    )
    role.add_argument("--json", action="store_true", help="one JSON document")
    by_hand = commands.add_parser(
        "deliver",
        help="deliver windows of exports now, by hand, on the instance of $DAGSTER_HOME",
        description="Deliver windows of the exports named now, as ranged runs of their "
        "window group's job (a day of windows each at most) executed in this process and "
        "recorded on the instance of $DAGSTER_HOME. Each window is its own object, at its "
        "own key: a window delivered before is overwritten with what the source holds now.",
    )
    by_hand.add_argument(
        "assets", nargs="+", metavar="ASSET", help="an export asset, e.g. affise/acme/clicks"
    )
    by_hand.add_argument(
        "--from",
        dest="first",
        required=True,
        metavar="WINDOW",
        help="the first window, by its start in UTC as its partition key: YYYY-MM-DD-hh:mm",
    )
    by_hand.add_argument(
        "--to", dest="last", metavar="WINDOW", help="the last window, included (default: --from)"
    )
    by_hand.add_argument(
        "--file", type=Path, help="default: $AFFISE_INTEGRATIONS, then integrations.yaml"
    )
    _add_state_dir(by_hand)
    options = parser.parse_args(argv)
    _pinned_demo_day()
    if options.command == "deliver":
        return deliver(
            options.file or integrations_path(),
            options.assets,
            options.first,
            options.last,
            options.state_dir,
        )
    if options.command == "external-id":
        return external_id(
            options.name, options.principal, options.file or integrations_path(), options.json
        )
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
