"""Training runs: a run whose process died is not left `running` for ever."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

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
