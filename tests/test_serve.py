"""`grounding serve`: a real Prefect server and workers in other processes; `prefect deployment run` from a shell."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from grounding.config import reset_settings
from tests.conftest import copy_tree, free_port, visible_vectors

APP = Path(__file__).resolve().parent.parent / "app"


@pytest.fixture(scope="module")
def served(database_url, tmp_path_factory):
    """One `grounding serve` for the module's tests (starting one takes ~45 s here); each test uses its own repo."""
    tmp_path = tmp_path_factory.mktemp("served")
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
    for name in (
        "ingest-repo/default",
        "refresh-repos/default",
        "reindex/default",
        "finetune-retriever/default",
        "train-reranker/default",
        "train-retro/default",
    ):
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


def test_ingest_page_submits_the_deployment_and_follows_its_flow_run(
    served, engine, repo_name, tmp_path, monkeypatch, loopback_ui
):
    """The copilot's Ingest page with PREFECT_API_URL at `grounding serve`: the flow runs on a worker."""
    from prefect import context as prefect_context
    from prefect.settings import PREFECT_API_URL
    from streamlit.testing.v1 import AppTest

    from grounding.search.retrieve import search

    env, _ = served
    api = env["PREFECT_API_URL"]
    monkeypatch.syspath_prepend(str(APP))
    import ingest_jobs

    monkeypatch.delenv("GROUNDING_UI_USER", raising=False)
    monkeypatch.setenv("GROUNDING_UI_AUTH", "none")  # local trusted mode, as `grounding ui` on loopback
    monkeypatch.setenv("GROUNDING_ENCODER", "hashing-64")  # as the worker's, to search what it wrote
    reset_settings()
    # The page checks PREFECT_API_URL itself; Prefect read its settings at import, so its client (in the page's
    # script thread and the job's, which see the process-global settings context) is pointed there too.
    monkeypatch.setenv("PREFECT_API_URL", api)
    root = prefect_context.SettingsContext.get()
    monkeypatch.setattr(
        prefect_context,
        "GLOBAL_SETTINGS_CONTEXT",
        prefect_context.SettingsContext(
            profile=root.profile, settings=root.settings.copy_with_update(updates={PREFECT_API_URL: api})
        ),
    )
    src = tmp_path / "tiny"
    src.mkdir()
    for i in range(5):
        (src / f"mod{i}.py").write_text(f"def deployed_function_{i}(x):\n    return x + {i}\n")
    (src / "blob.bin").write_bytes(b"\0\1\2")

    def ingest_through_the_page(source) -> tuple[AppTest, ingest_jobs.IngestJob]:
        at = AppTest.from_file(str(APP / "pages" / "1_Ingest.py"), default_timeout=120)
        at.run()
        assert not at.exception, at.exception
        captions = [c.value for c in at.caption]
        assert f"Runs on a Prefect worker: deployment `ingest-repo/default` at {api}." in captions, captions
        at.text_input[0].input(str(source))
        at.text_input[1].input(repo_name)
        at.button[0].click().run()
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]
        job = ingest_jobs.job(at.session_state["ingest_job"])
        assert job is not None and job.mode == "deployment"
        deadline = time.monotonic() + 300
        while not job.finished:
            assert time.monotonic() < deadline, f"the ingest did not finish: {job}"
            time.sleep(1)
            at.run()
            assert not at.exception, at.exception
        at.run()
        assert not at.exception, at.exception
        return at, job

    at, job = ingest_through_the_page(src)
    assert job.status == "complete", job.error
    assert job.flow_run_id and job.flow_state == "COMPLETED"
    assert any(f"flow run `{job.flow_run_id}`" in c.value for c in at.caption), "the page names the flow run"
    assert any(f"Ingest of **{repo_name}** complete" in s.value for s in at.success)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["files seen"] == "6" and metrics["chunks added"] == "5" and metrics["skipped"] == "1"
    reasons = next(d.value for d in at.dataframe if list(d.value.columns) == ["reason", "files"])
    assert reasons.to_dict("records") == [{"reason": "binary", "files": 1}]
    run = json.loads(prefect(env, "flow-run", "inspect", job.flow_run_id, "--output", "json"))
    assert run["state"]["type"] == "COMPLETED" and run["parameters"]["name"] == repo_name, "the worker ran it"
    with engine.connect() as conn:
        chunks = conn.execute(
            sa.text("SELECT count(*) FROM chunks c JOIN repositories r ON r.id = c.repo_id WHERE r.name = :n"),
            {"n": repo_name},
        ).scalar()
    assert chunks == 5
    hits = search(repo_name, "deployed_function_3", k=3, mode="lexical", rerank=False)
    assert hits and hits[0].citation.path == "mod3.py"

    # A missing path: the flow run fails on the worker, and the page says why (no traceback).
    at, job = ingest_through_the_page(tmp_path / "gone")
    assert job.status == "failed" and job.flow_run_id and job.flow_state == "FAILED"
    assert not at.success and not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and f"Ingest of {repo_name} failed: flow run {job.flow_run_id} ended FAILED" in errors[0]
    assert "does not exist" in errors[0] and "Traceback" not in errors[0], errors


def test_refresh_deployment_starts_one_ingest_run_per_moved_repository(served, engine, repo_name, hashing, tmp_path):
    from grounding.index.ingest import ingest
    from grounding.search.retrieve import search
    from tests.conftest import git, git_repo

    env, _ = served
    moving = git_repo(copy_tree("itsdangerous", tmp_path / "moving"))
    still = git_repo(copy_tree("itsdangerous", tmp_path / "still"))
    names = [f"{repo_name}-moving", f"{repo_name}-still"]
    for name, src in zip(names, (moving, still)):
        ingest(f"file://{src}", name=name, embedder=hashing)
    (moving / "signer.py").write_text((moving / "signer.py").read_text() + "\ndef fanned_out_marker():\n    pass\n")
    git(moving, "commit", "-qam", "move")

    out = prefect(env, "deployment", "run", "refresh-repos/default", "--params", json.dumps({"repos": names}))
    run = wait_for_run(env, re.search(r"UUID: ([0-9a-f-]{36})", out).group(1))
    assert run["state"]["type"] == "COMPLETED", run["state"]
    # The moved repository was ingested by an ingest-repo flow run of its own, a sub-flow run of the refresh.
    children = json.loads(
        subprocess.run(
            [sys.executable, "-c", CHILD_RUNS, run["id"]], env=env, check=True, capture_output=True, text=True
        ).stdout
    )
    assert [(c["flow"], c["parameters"]["name"], c["state"]) for c in children] == [
        ("ingest-repo", names[0], "COMPLETED")
    ], children
    with engine.connect() as conn:
        snapshots = dict(
            conn.execute(
                sa.text(
                    "SELECT r.name, count(s.id) FROM repositories r JOIN snapshots s ON s.repo_id = r.id "
                    "WHERE r.name = ANY(:n) GROUP BY r.name"
                ),
                {"n": names},
            ).all()
        )
    assert snapshots == {names[0]: 2, names[1]: 1}
    hits = search(names[0], "fanned_out_marker", k=1, mode="lexical", rerank=False)
    assert hits and hits[0].citation.path == "signer.py"


# The flow runs started as sub-flow runs of a flow run (its id in argv): their flow, parameters and state, as JSON.
CHILD_RUNS = """
import asyncio, json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

async def main():
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[sys.argv[1]]))
        )
        flows = {r.flow_id: (await client.read_flow(r.flow_id)).name for r in runs}
        rows = [{"flow": flows[r.flow_id], "parameters": r.parameters, "state": r.state.type.value} for r in runs]
        print(json.dumps(rows))

asyncio.run(main())
"""


def stop(worker: subprocess.Popen, grace_s: float = 30) -> None:
    """A worker this test started, gone: SIGTERM was sent; on a busy machine a Prefect worker can take longer than
    `grace_s` to shut down, and then its whole session (it and the flow-run processes it started) is killed."""
    try:
        worker.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)


def _flow_run_pids(run_id: str) -> list[int]:
    """The processes of flow run `run_id`: the one its worker started for it (its id in the env), and children."""
    needle = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    pids = []
    for proc_dir in Path("/proc").iterdir():
        try:
            if proc_dir.name.isdigit() and needle in (proc_dir / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc_dir.name))
        except OSError:
            continue
    return pids


def test_a_worker_process_killed_mid_ingest_leaves_a_rerun_that_completes_with_no_duplicates(
    served, engine, repo_name, hashing, tmp_path
):
    from grounding.index.ingest import ingest

    env, proc = served
    src = copy_tree("pygments", tmp_path / "pygments")  # 343 files: two write batches of 200
    out = prefect(env, "deployment", "run", "ingest-repo/default", "-p", f"source={src}", "-p", f"name={repo_name}")
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)

    def written() -> int:  # files the running snapshot has written so far
        with engine.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT count(*) FROM files f JOIN repositories r ON r.id = f.repo_id JOIN snapshots s "
                    "ON s.id = f.snapshot_id WHERE r.name = :n AND s.status = 'running'"
                ),
                {"n": repo_name},
            ).scalar()

    deadline = time.monotonic() + 240
    while written() == 0:
        assert time.monotonic() < deadline, "the first batch was never written"
        time.sleep(0.1)
    pids = _flow_run_pids(run_id)
    assert pids, "the flow run's process"
    for pid in pids:  # as a machine that dies takes the process with it: no cleanup runs
        os.kill(pid, signal.SIGKILL)
    crashed = wait_for_run(env, run_id)
    assert crashed["state"]["type"] in ("CRASHED", "FAILED"), crashed["state"]
    with engine.connect() as conn:
        visible = conn.execute(
            sa.text("SELECT current_snapshot_id FROM repositories WHERE name = :n"), {"n": repo_name}
        ).scalar()
    assert visible is None, "half an ingest is never visible"

    out = prefect(env, "deployment", "run", "ingest-repo/default", "-p", f"source={src}", "-p", f"name={repo_name}")
    run = wait_for_run(env, re.search(r"UUID: ([0-9a-f-]{36})", out).group(1))
    assert run["state"]["type"] == "COMPLETED", run["state"]

    # The same chunks and vectors as one uninterrupted ingest in one process, each once.
    ingest(str(src), name=f"{repo_name}-whole", embedder=hashing)
    assert_same_visible_chunks(engine, repo_name, f"{repo_name}-whole")


def assert_same_visible_chunks(engine, name: str, whole: str) -> None:
    """Repository `name` shows the chunks and vectors that `whole` (one uninterrupted ingest) shows, each once."""
    got, expected = visible_vectors(engine, name), visible_vectors(engine, whole)
    assert len(got) > 1000 and len(set(got)) == len(got), "no chunk twice"
    assert got == expected


# The ingest-shard flow runs of repository argv[1] on the API: [{"id", "state", "pid", "index"}], oldest first.
SHARD_RUNS = """
import asyncio, json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.sorting import FlowRunSort

async def main():
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["ingest-shard"])), sort=FlowRunSort.START_TIME_ASC
        )
        rows = [
            {"id": str(r.id), "state": r.state.type.value, "pid": r.infrastructure_pid, "index": r.parameters["index"]}
            for r in runs if r.parameters.get("repo") == sys.argv[1]
        ]
        print(json.dumps(rows))

asyncio.run(main())
"""


def test_two_workers_share_an_ingests_shards_one_killed_and_retried_with_the_result_of_one_ingest(
    served, engine, repo_name, hashing, tmp_path
):
    from grounding.index.ingest import ingest

    env, proc = served
    src = copy_tree("pygments", tmp_path / "pygments")
    worker_env = {**env, "GROUNDING_WRITE_BATCH_FILES": "20"}  # many batches: a shard can die between two
    workers: list[subprocess.Popen] = []

    def start_worker(name: str) -> None:  # one flow run at a time (--limit 1)
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", "cpu", "--type", "process"]
                + ["--name", name, "--limit", "1"],
                env=worker_env,
                cwd=Path(__file__).resolve().parent.parent,
                stdout=open(tmp_path / f"{name}.log", "w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    serve_worker = [
        int(p)
        for p in subprocess.run(
            ["pgrep", "-f", f"worker start .*--name grounding-cpu-{proc.pid}"], capture_output=True, text=True
        ).stdout.split()
    ]
    assert serve_worker, "the cpu worker grounding serve started"

    def shard_runs() -> list[dict]:
        out = subprocess.run([sys.executable, "-c", SHARD_RUNS, repo_name], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    # Only workers this test starts take runs: "ingest" the ingest-repo run, then "shards-0" and "shards-1"
    # one shard each; their logs say which flow runs they took.
    for pid in serve_worker:
        os.kill(pid, signal.SIGSTOP)
    try:
        start_worker("ingest")
        out = prefect(
            env,
            "deployment",
            "run",
            "ingest-repo/default",
            "-p",
            f"source={src}",
            "-p",
            f"name={repo_name}",
            "-p",
            "shards=2",
            "-p",
            "shard_pool=cpu",
            "-p",
            "tune_fusion=false",
        )
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
        deadline = time.monotonic() + 120
        while json.loads(prefect(env, "flow-run", "inspect", run_id, "--output", "json"))["state"]["type"] != "RUNNING":
            assert time.monotonic() < deadline, "the ingest-repo run never started"
            time.sleep(0.5)
        start_worker("shards-0")
        start_worker("shards-1")

        # Kill the first shard's process once it has written a batch, as a machine that dies would.
        deadline = time.monotonic() + 180
        while True:
            running = [r for r in shard_runs() if r["state"] == "RUNNING" and r["pid"]]
            with engine.connect() as conn:
                written = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM files f JOIN repositories r ON r.id = f.repo_id JOIN snapshots s "
                        "ON s.id = f.snapshot_id WHERE r.name = :n AND s.status = 'running'"
                    ),
                    {"n": repo_name},
                ).scalar()
            if running and written:
                break
            assert time.monotonic() < deadline, f"no shard ran: {shard_runs()}"
            time.sleep(0.1)
        victim = running[0]
        for pid in _flow_run_pids(victim["id"]):
            os.kill(pid, signal.SIGKILL)

        run = wait_for_run(env, run_id)
        assert run["state"]["type"] == "COMPLETED", run["state"]
    finally:
        for pid in serve_worker:
            os.kill(pid, signal.SIGCONT)
        for worker in workers:
            worker.terminate()
        for worker in workers:
            stop(worker)

    runs = shard_runs()
    assert sorted(r["index"] for r in runs if r["state"] == "COMPLETED") == [0, 1]
    assert [r["state"] for r in runs if r["id"] == victim["id"]] in (["CRASHED"], ["FAILED"])
    assert sum(r["index"] == victim["index"] for r in runs) == 2, "the killed shard was started again"
    for name in ("shards-0", "shards-1"):  # each ran a shard ("Worker '...' submitting flow run '<id>'")
        log = (tmp_path / f"{name}.log").read_text()
        assert any(r["id"] in log for r in runs), log[-2000:]
    assert run_id in (tmp_path / "ingest.log").read_text()

    # The same chunks and vectors as one uninterrupted ingest in one process, each once.
    ingest(str(src), name=f"{repo_name}-whole", embedder=hashing)
    assert_same_visible_chunks(engine, repo_name, f"{repo_name}-whole")
