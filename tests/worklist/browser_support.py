"""A ``squid listen`` beside the API for the worklist page tests, and axe-core from npm."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.jobs.jobs_support import REPO_ROOT, wait_for
from tests.net_support import free_port
from tests.node.orthanc_support import echo

NODE_AE = "SQUID"


@contextmanager
def listening(env: dict[str, str], workdir: Path, **settings: str) -> Iterator[int]:
    """``squid listen`` scoring in its own process (no broker) with the API's spool and state folder;
    yields its port once it answers a C-ECHO and wrote its first health snapshot."""
    port = free_port()
    node_env = {k: v for k, v in env.items() if k != "SQUID_BROKER_URL"}
    node_env.update(
        {
            "SQUID_DICOM_QUIET_SECONDS": "1",
            "SQUID_DICOM_RETRY_SECONDS": "0",
            "SQUID_DICOM_ALLOWED_AES": json.dumps(["STORESCU", "ECHOSCU"]),
            **settings,
        }
    )
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "node.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "listen", "--port", str(port), "--ae-title", NODE_AE],
            cwd=REPO_ROOT,
            env=node_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    health = Path(env["SQUID_NODE_STATE_DIR"]) / "health.json"
    health.unlink(missing_ok=True)

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError((workdir / "node.log").read_text(errors="replace")[-3000:])
        return health.is_file() and echo("127.0.0.1", port, NODE_AE)

    try:
        wait_for(up, 180, "squid listen", interval=0.3)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def axe_source(folder: Path) -> str:
    """axe-core's browser script, installed from npm into ``folder`` (the machine reaches npm only)."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed for the accessibility check: apt-get install npm")
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(folder), "axe-core@4"],
        check=True,
        timeout=300,
        capture_output=True,
    )
    return (folder / "node_modules" / "axe-core" / "axe.min.js").read_text(encoding="utf-8")


def axe_violations(driver: Any, source: str, include: str = "body") -> list[dict[str, Any]]:
    """WCAG 2 A/AA violations axe-core finds in ``include`` (contrast, names, roles, keyboard...)."""
    driver.execute_script(source)
    script = """
        const done = arguments[arguments.length - 1];
        axe.run(document.querySelector(arguments[0]),
                {runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21aa"]}})
           .then((result) => done(JSON.stringify(result.violations)))
           .catch((error) => done(JSON.stringify([{id: "axe-error", help: String(error), nodes: []}])));
    """
    driver.set_script_timeout(120)
    found: list[dict[str, Any]] = json.loads(driver.execute_async_script(script, include))
    return [
        {"id": v["id"], "help": v["help"], "nodes": [n.get("html", "")[:160] for n in v["nodes"]][:5]}
        for v in found
    ]
