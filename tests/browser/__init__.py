"""Browser checks of the running UI: Debian's /usr/bin/chromium driven by playwright-core
(installed by scripts/setup.sh from tests/browser/package-lock.json, never a browser download)."""

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

HERE = Path(__file__).resolve().parent


def run_browser_checks(
    dev: Any, out_dir: Path, failed_asset: str, healthy_asset: str
) -> dict[str, Any]:
    """Lineage, a partitions view with green and red windows, a failed window's reason, a
    delivered window's verification and each asset's latest-window check (passed for the
    healthy one, failed for the failed one), on screenshots in `out_dir`; fails with what was
    missing."""
    # On a fresh instance a "Join the Dagster community" pop-up covers the page.
    dev.graphql("mutation { setNuxSeen }")
    done = subprocess.run(
        ["node", str(HERE / "check_ui.mjs"), dev.url, str(out_dir), failed_asset, healthy_asset],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"browser check failed:\n{done.stderr}\n{done.stdout}"
    findings = json.loads(done.stdout.strip().splitlines()[-1])
    assert findings["lineage"] and findings["reason"] and findings["verified"], findings
    assert findings["freshness"] in ("Passed", "Succeeded"), findings
    assert findings["late"] == "Failed", findings
    return findings
