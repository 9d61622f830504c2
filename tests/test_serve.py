"""`grounding serve`: a real Prefect server and workers in other processes; `prefect deployment run` from a shell."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from tests.conftest import copy_tree


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(database_url, tmp_path):
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "GROUNDING_DATABASE_URL": database_url,
        "GROUNDING_HOME": str(tmp_path / "home"),
        "GROUNDING_ENCODER": "hashing-64",
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "grounding.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 240
    while "grounding is serving" not in (tmp_path / "serve.log").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
        time.sleep(0.5)
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    yield env, proc
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=60) == 0, "serve stops cleanly on Ctrl-C"
    log.close()
    leftovers = subprocess.run(["pgrep", "-f", f"--port {port}"], capture_output=True, text=True).stdout.split()
    assert not leftovers, "the Prefect server it started is gone"


def prefect(env, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args], env=env, check=True, capture_output=True, text=True
    ).stdout


def wait_for_run(env, run_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = json.loads(prefect(env, "flow-run", "inspect", run_id, "--output", "json"))
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} did not finish: {run['state']}")


def test_deployment_run_from_the_cli_ingests_through_a_worker(served, engine, repo_name, tmp_path):
    env, proc = served
    deployments = prefect(env, "deployment", "ls")
    for name in ("ingest-repo/default", "refresh-repos/default", "reindex/default"):
        assert name in deployments
    src = copy_tree("requests", tmp_path / "requests")
    out = prefect(env, "deployment", "run", "ingest-repo/default", "-p", f"source={src}", "-p", f"name={repo_name}")
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    run = wait_for_run(env, run_id)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    with engine.connect() as conn:
        chunks = conn.execute(
            sa.text("SELECT count(*) FROM chunks c JOIN repositories r ON r.id = c.repo_id WHERE r.name = :n"),
            {"n": repo_name},
        ).scalar()
    assert chunks > 100

    # The reindex deployment goes to the gpu pool; on this machine its worker runs it on the CPU.
    out = prefect(
        env,
        "deployment",
        "run",
        "reindex/default",
        "-p",
        f"repo={repo_name}",
        "-p",
        "encoder=hashing-32",
        "-p",
        "grace_seconds=0",
    )
    run = wait_for_run(env, re.search(r"UUID: ([0-9a-f-]{36})", out).group(1))
    assert run["state"]["type"] == "COMPLETED", run["state"]
    with engine.connect() as conn:
        dim = conn.execute(
            sa.text(
                "SELECT v.dim FROM index_versions v JOIN repositories r ON r.id = v.repo_id "
                "WHERE r.name = :n AND v.status = 'active'"
            ),
            {"n": repo_name},
        ).scalar()
    assert dim == 32

    # A failing run is visible in Prefect, and leaves the repository as it was.
    out = prefect(
        env, "deployment", "run", "ingest-repo/default", "-p", f"source={tmp_path / 'gone'}", "-p", f"name={repo_name}"
    )
    run = wait_for_run(env, re.search(r"UUID: ([0-9a-f-]{36})", out).group(1))
    assert run["state"]["type"] == "FAILED"
    assert proc.poll() is None, "serve keeps running"
