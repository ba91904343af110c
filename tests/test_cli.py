"""`affise-s3 validate`, as an account manager runs it: the installed console script."""

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from affise_s3_assets.config import apply_integrations, parse_integrations
from affise_s3_assets.live_config import write_last_good
from tests.conftest import ROOT

CLI = ROOT / ".venv" / "bin" / "affise-s3"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, cwd=ROOT)


def export(bucket: str, directory: str, frequency: int = 15, secret: str = "${S}") -> str:
    return f"""
      frequency: {frequency}
      bucket: {bucket}
      region: us-west-2
      directory: "{directory}"
      access_key: ${{K}}
      secret_key: {secret}"""


def test_validate_lists_every_problem_one_per_line_and_never_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "integrations.yaml"
    path.write_text(
        f"""integrations:
  - name: acme
    start: "2026-11-01 00:00:00"
    clicks:{export("acme-raw", "affise", 7)}
  - name: globex
    start: "2026-11-01 00:00:00"
    clicks:{export("shared-raw", "x")}
    conversions:{export("shared-raw", "x")}
  - name: initech
    start: "2026-11-01 00:00:00"
    clicks:{export("raw--ol-s3", "i", secret="wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY")}
  - name: hooli
    start: "2026-11-01 00:00:00"
    clicks:{export("hooli-raw", "h")}
"""
    )
    done = run("validate", str(path))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith("integration 'acme': clicks.frequency: 7 minutes does not cut")
    assert any(
        line.startswith("integration 'globex': clicks.directory:") and "both are refused" in line
        for line in lines
    )
    assert "integration 'initech': clicks.bucket: 'raw--ol-s3' is not an AWS S3 bucket name" in (
        done.stdout
    )
    assert "integration 'initech': clicks.secret_key: must be an ${ENV_VAR} reference" in (
        done.stdout
    )
    assert "hooli" not in done.stdout
    assert "wJalrXUtnFEMI" not in done.stdout + done.stderr
    assert "4 problem(s)" in done.stderr


def test_validate_names_both_lines_of_a_duplicate_key(tmp_path: Path) -> None:
    path = tmp_path / "integrations.yaml"
    path.write_text(
        f"""integrations:
  - name: acme
    start: "2026-11-01 00:00:00"
    clicks:{export("acme-raw", "affise")}
      affiliates: [101]
      affiliates: []
"""
    )
    done = run("validate", str(path))
    assert done.returncode == 1
    assert "key 'affiliates' appears twice in one block (lines 11 and 12)" in done.stdout


def test_validate_passes_the_shipped_file() -> None:
    shipped = ROOT / "integrations.yaml"
    done = run("validate", str(shipped))
    assert done.returncode == 0, done.stdout + done.stderr
    integrations = parse_integrations(shipped.read_text()).integrations
    exports = sum(len(i.exports()) for i in integrations)
    assert (
        done.stdout.strip() == f"{shipped}: ok, {len(integrations)} integrations, {exports} exports"
    )


def test_validate_judges_as_the_deployment_does_with_its_state_dir(tmp_path: Path) -> None:
    """A 1-minute export started 2 years ago is past the bound on windows before now: refused
    as a newcomer, accepted when the deployment's last applied config already delivers it."""
    path = tmp_path / "integrations.yaml"
    old_start = (datetime.now(UTC) - timedelta(days=730)).strftime("%Y-%m-%d 00:00:00")
    path.write_text(
        f"""integrations:
  - name: acme
    start: "{old_start}"
    clicks:{export("acme-raw", "affise", 1)}
"""
    )
    fresh = run("validate", str(path))
    assert fresh.returncode == 1 and "windows of 1 min (clicks) before now" in fresh.stdout
    state = tmp_path / "state"
    applied = apply_integrations(path.read_text(), str(path), now=datetime(2026, 1, 1))
    write_last_good(state, applied)
    delivering = run("validate", str(path), "--state-dir", str(state))
    assert delivering.returncode == 0, delivering.stdout
