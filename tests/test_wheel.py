"""The built wheel is the product: installed with its `[deploy]` extra into a fresh virtualenv
outside the checkout, at the locked versions, it loads the code location and delivers a
window to the real S3 server, reading nothing of the repository checkout."""

import shutil
import subprocess
import sys
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conftest import ROOT, S3Server
from tests.delivered import delivered_rows, fetch, keys_in, source_rows
from tests.window_rig import START, WINDOW

UV = shutil.which("uv")


def run(*command: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.skipif(UV is None, reason="uv installs the project (scripts/setup.sh)")
def test_the_wheel_installed_outside_the_checkout_loads_and_delivers(
    s3_server: S3Server, bucket: str, events_db: Path, tmp_path: Path
) -> None:
    assert UV is not None
    place = tmp_path / "elsewhere"
    place.mkdir()
    run(UV, "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(ROOT), cwd=place)
    (wheel,) = (tmp_path / "dist").glob("affise_s3_assets-*.whl")
    # The runtime only: the demo's generator and its data stay in the checkout.
    packed = zipfile.ZipFile(wheel).namelist()
    assert "affise_s3_assets/definitions.py" in packed
    assert not [name for name in packed if name.startswith("affise_s3_assets/demo/")]
    locked = tmp_path / "locked.txt"
    run(
        UV, "export", "--frozen", "--no-dev", "--extra", "deploy", "--no-emit-project",
        "--no-hashes", "--project", str(ROOT), "-o", str(locked), cwd=place,
    )  # fmt: skip
    venv = tmp_path / "venv"
    run(UV, "venv", "--python", sys.executable, str(venv), cwd=place)
    python = str(venv / "bin" / "python")
    run(
        UV, "pip", "install", "--python", python, "--compile-bytecode",
        "-r", str(locked), f"{wheel}[deploy]", cwd=place,
    )  # fmt: skip
    # The deploy extra is there, and the package is the installed one, not the checkout's.
    where = run(
        python, "-c",
        "import affise_s3_assets, dagster_k8s, dagster_postgres; print(affise_s3_assets.__file__)",
        cwd=place,
    )  # fmt: skip
    assert where.startswith(str(venv)) and str(ROOT) not in where

    integrations = place / "integrations.yaml"
    integrations.write_text(
        f"""integrations:
  - name: acme
    start: "2026-11-24 00:00:00"
    clicks:
      frequency: 60
      bucket: {bucket}
      region: us-east-1
      directory: wheel
      access_key: ${{ACME_AWS_ACCESS_KEY_ID}}
      secret_key: ${{ACME_AWS_SECRET_ACCESS_KEY}}
      endpoint_url: {s3_server.endpoint_url}
"""
    )
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DAGSTER_HOME": str(place),
        "AFFISE_INTEGRATIONS": str(integrations),
        "AFFISE_EVENTS_DB": str(events_db),
        "ACME_AWS_ACCESS_KEY_ID": s3_server.customer.access_key,
        "ACME_AWS_SECRET_ACCESS_KEY": s3_server.customer.secret_key,
    }
    (place / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    run(
        str(venv / "bin" / "dagster"), "asset", "materialize",
        "-m", "affise_s3_assets.definitions",
        "--select", "affise/acme/clicks", "--partition", WINDOW,
        cwd=place, env=env,
    )  # fmt: skip
    key = f"wheel/2026/11/25/{START:%Y-%m-%d %H:%M:%S}.csv.gz"
    assert keys_in(s3_server, bucket) == [key]
    header, rows = delivered_rows(fetch(s3_server, bucket, key))
    assert (header, rows) == source_rows(events_db, "clicks", START, START + timedelta(hours=1))
    assert rows
