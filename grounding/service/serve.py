"""`grounding serve`: a Prefect server (unless PREFECT_API_URL names one), the work pools, the deployments
of prefect.yaml, and one worker per pool, so that `prefect deployment run` works from another shell."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from grounding.config import get_settings
from grounding.errors import GroundingError

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[2]  # where prefect.yaml and flows/ live
POOLS = ("cpu", "gpu")
STARTUP_TIMEOUT_S = 180


class ServeError(GroundingError):
    """The Prefect server, a work pool, the deployments or a worker could not be brought up."""


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def _wait_healthy(api_url: str, proc: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServeError(f"the Prefect server exited with code {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ServeError(f"the Prefect API at {api_url} did not answer within {STARTUP_TIMEOUT_S}s")


def _run(cmd: list[str], env: dict, what: str) -> None:
    result = subprocess.run(cmd, env=env, cwd=PROJECT_DIR, capture_output=True, text=True)
    if result.returncode != 0:
        raise ServeError(f"{what} failed: {(result.stderr or result.stdout).strip()[-800:]}")


def serve(*, port: int = 4200, pools: tuple[str, ...] = POOLS, ready=None) -> int:
    """Run until interrupted (Ctrl-C or SIGTERM); returns the exit code. `ready(api_url)` is called once up."""
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str(get_settings().home / "prefect"))
    children: list[tuple[str, subprocess.Popen]] = []
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        api_url = env.get("PREFECT_API_URL")
        if not api_url:
            api_url = f"http://127.0.0.1:{port}/api"
            env["PREFECT_API_URL"] = api_url
            server = subprocess.Popen(
                _prefect("server", "start", "--host", "127.0.0.1", "--port", str(port)),
                env=env,
                cwd=PROJECT_DIR,
                start_new_session=True,
            )
            children.append(("server", server))
            _wait_healthy(api_url, server)
        else:
            _wait_healthy(api_url, None)
        for pool in pools:
            exists = subprocess.run(_prefect("work-pool", "inspect", pool), env=env, capture_output=True)
            if exists.returncode != 0:
                _run(_prefect("work-pool", "create", pool, "--type", "process"), env, f"creating work pool {pool!r}")
        _run(_prefect("--no-prompt", "deploy", "--all"), env, "prefect deploy --all")
        for pool in pools:
            worker = subprocess.Popen(
                _prefect(
                    "worker", "start", "--pool", pool, "--type", "process", "--name", f"grounding-{pool}-{os.getpid()}"
                ),
                env=env,
                cwd=PROJECT_DIR,
                start_new_session=True,
            )
            children.append((f"worker {pool}", worker))
        log.info("serving: PREFECT_API_URL=%s, pools %s", api_url, ", ".join(pools))
        if ready:
            ready(api_url)
        while not stopping:
            for name, proc in children:
                if proc.poll() is not None:
                    raise ServeError(f"{name} exited with code {proc.returncode}")
            time.sleep(0.5)
        return 0
    finally:
        for name, proc in reversed(children):  # workers first, the server last
            if proc.poll() is None:
                proc.terminate()
        for name, proc in reversed(children):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for s, handler in previous.items():
            signal.signal(s, handler)
