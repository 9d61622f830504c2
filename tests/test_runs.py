"""Training runs: a run whose process died is not left `running` for ever."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import sqlalchemy as sa

from grounding import store
from grounding.training.runs import mark_dead_runs, start_run, training_runs


def test_a_run_left_running_by_a_dead_process_is_failed_when_the_next_run_starts(engine, repo_name, capsys):
    from grounding.cli import main

    with engine.begin() as conn:
        store.upsert_repo(conn, repo_name, source="/nowhere", ref=None)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, here = int(ended.stdout), socket.gethostname()
    rows = {
        "dead": (here, dead_pid),
        "alive": (here, os.getpid()),
        "elsewhere": ("another-host", dead_pid),  # cannot be checked from here
        "legacy": (None, None),  # from before processes were recorded
    }
    ids = {}
    with engine.begin() as conn:
        rid = store.repo_id(conn, repo_name)
        for name, (host, pid) in rows.items():
            ids[name] = store.insert_training_run(
                conn, rid, kind="reranker", config={}, device="cpu", host=host, pid=pid
            )

    new = start_run(repo_name, kind="reranker", config={}, device="cpu")
    runs = {r.id: r for r in training_runs(repo_name, limit=None)}
    assert runs[ids["dead"]].status == "failed" and runs[ids["dead"]].finished_at is not None
    assert f"pid {dead_pid} on {here}" in runs[ids["dead"]].error and "killed or crashed" in runs[ids["dead"]].error
    assert [runs[ids[n]].status for n in ("alive", "elsewhere", "legacy")] == ["running"] * 3
    assert runs[new].status == "running"
    assert mark_dead_runs() == [], "once"

    # `grounding runs` shows a run whose process just died as failed, not running.
    with engine.begin() as conn:
        late = store.insert_training_run(conn, rid, kind="realm", config={}, device="cpu", host=here, pid=dead_pid)
    assert main(["runs", repo_name]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith(str(late)))
    assert "realm  failed" in line and "killed or crashed" in line


LIVE_RUN = """
import socket, sys, time
socket.gethostname = lambda: "worker-b"  # as if on another machine: this host's process check cannot see it
from grounding.training.runs import recorded_run
with recorded_run(sys.argv[1], kind="realm", config={}, device="cpu") as run_id:
    print(run_id, flush=True)
    time.sleep(120)
"""


def test_any_host_fails_a_run_whose_heartbeat_stopped_and_keeps_a_live_one(engine, repo_name, monkeypatch):
    import time

    from grounding.config import reset_settings

    monkeypatch.setenv("GROUNDING_RUN_HEARTBEAT_S", "0.3")
    monkeypatch.setenv("GROUNDING_RUN_STALE_AFTER_S", "2")
    reset_settings()
    with engine.begin() as conn:
        rid = store.upsert_repo(conn, repo_name, source="/nowhere", ref=None)
    live = subprocess.Popen([sys.executable, "-c", LIVE_RUN, repo_name], stdout=subprocess.PIPE, text=True, env=os.environ)
    live_id = int(live.stdout.readline())  # its start failed nothing yet: the silent runs come after it
    with engine.begin() as conn:
        silent = store.insert_training_run(conn, rid, kind="realm", config={}, device="cuda", host="worker-c", pid=7)
        conn.execute(sa.text("UPDATE training_runs SET heartbeat_at = now() - interval '10 minutes' WHERE id = :i"),
                     {"i": silent})
        legacy = store.insert_training_run(conn, rid, kind="realm", config={}, device="cuda", host="worker-c", pid=8)
        conn.execute(sa.text("UPDATE training_runs SET heartbeat_at = NULL WHERE id = :i"), {"i": legacy})
    try:
        assert mark_dead_runs() == [silent], "the run silent for ten minutes, on a host this one cannot check"
        status = {r.id: r for r in training_runs(repo_name, limit=None)}
        assert "stopped its heartbeat" in status[silent].error and "worker-c" in status[silent].error
        for _ in range(4):  # 3 s: past the 2 s allowed, so only the heartbeat keeps it running
            time.sleep(0.75)
            assert live_id not in mark_dead_runs(), "a live run's heartbeat keeps it running"
        live.kill()  # SIGKILL: no `finally`, no failure recorded by the run itself
        live.wait()
        assert {r.id: r for r in training_runs(repo_name, limit=None)}[live_id].status == "running"
        deadline = time.monotonic() + 10
        while live_id not in mark_dead_runs():
            assert time.monotonic() < deadline, "the killed run is failed once its heartbeat is 2 s old"
            time.sleep(0.3)
    finally:
        live.kill()
    status = {r.id: r for r in training_runs(repo_name, limit=None)}
    assert status[live_id].status == "failed" and "worker-b" in status[live_id].error
    assert status[legacy].status == "running", "no heartbeat recorded: only its own host can tell"


def test_a_heartbeat_stops_once_the_run_is_no_longer_running(engine, repo_name, caplog):
    import time

    from grounding.training.runs import Heartbeat

    with engine.begin() as conn:
        store.upsert_repo(conn, repo_name, source="/nowhere", ref=None)
    run = start_run(repo_name, kind="realm", config={}, device="cpu")
    with Heartbeat(run, every_s=0.1) as beat:
        with engine.begin() as conn:
            store.update_training_run(conn, run, status="failed", error="failed by another host", finished=True)
        time.sleep(0.5)
        assert not beat._thread.is_alive(), "it does not beat for a run another host failed"
    assert "no longer running" in caplog.text
