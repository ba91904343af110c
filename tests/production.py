"""scripts/prod-local.sh driven from a test: the cluster's engine on this machine (Postgres,
code server, daemon, webserver as separate processes), asked things through the webserver's
GraphQL like `dagster dev` in tests/operations.py."""

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT
from tests.operations import DagsterDev, wait_for

SCRIPT = ROOT / "scripts" / "prod-local.sh"
# The chart's name for the location (deploy/helm-values.yaml), which the script keeps.
LOCATION = "affise-s3-assets"
COMPONENTS = ("code-server", "daemon", "webserver")


def run_script(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    """`bash scripts/prod-local.sh ARGS`; its output, or an AssertionError holding it."""
    done = subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"prod-local.sh {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def without_run_launcher(config: dict[str, Any]) -> dict[str, Any]:
    return {section: value for section, value in config.items() if section != "run_launcher"}


class ProdLocal(DagsterDev):
    """The engine of scripts/prod-local.sh with its state under `home` (AFFISE_PROD_HOME); `env`
    holds every setting the script reads (ports, DAGSTER_PG_*, AFFISE_*)."""

    def __init__(self, home: Path, env: dict[str, str], port: int) -> None:
        super().__init__(home / "dagster_home", env, port)
        self.prod_home = home
        self.env = {**env, "AFFISE_PROD_HOME": str(home)}
        self.location = LOCATION  # the chart's name for it, not dagster dev's

    def script(self, *args: str) -> str:
        return run_script(self.env, *args)

    def start(self) -> None:
        self.script("start")
        wait_for("the code location to load", self.loaded, timeout=180)

    def stop(self) -> None:
        self.script("stop")

    def restart(self, component: str) -> None:
        self.script("restart", component)
        wait_for("the code location to load", self.loaded, timeout=180)

    def pid(self, component: str) -> int:
        return int((self.prod_home / "run" / f"{component}.pid").read_text())

    def environ(self, component: str) -> dict[str, str]:
        """The environment the component's process runs with."""
        raw = Path(f"/proc/{self.pid(component)}/environ").read_bytes()
        return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)

    def argv(self, component: str) -> list[str]:
        raw = Path(f"/proc/{self.pid(component)}/cmdline").read_bytes()
        return raw.decode().rstrip("\0").split("\0")

    def daemon_log(self) -> str:
        return (self.prod_home / "logs" / "daemon.log").read_text(errors="replace")

    def instance_config(self) -> dict[str, Any]:
        return yaml.safe_load((self.home / "dagster.yaml").read_text())

    def logs(self) -> dict[str, str]:
        """Every log the engine wrote: each component's, the schema migration's, Postgres's."""
        files = [*sorted((self.prod_home / "logs").glob("*.log"))]
        pg_dir = Path(self.env["AFFISE_PROD_PG_DIR"])
        files += [pg_dir / "postgres.log", pg_dir / "initdb.log"]
        return {str(f): f.read_text(errors="replace") for f in files if f.exists()}

    def tail(self, lines: int = 40) -> str:
        return "\n".join(
            f"== {name}\n" + "\n".join(text.splitlines()[-lines:])
            for name, text in self.logs().items()
        )
