"""Bad input gets a clear error, a non-zero exit, and loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from grounding import ask, db
from grounding.cli import main
from grounding.config import reset_settings
from grounding.errors import DatabaseUnavailable, EmptyRepository, RepoNotFound
from grounding.index.ingest import ingest
from tests.conftest import copy_tree
from tests.test_ingest import table_counts, visible_chunks


def test_unknown_repo_names_the_fix(engine, repo_name, hashing, tmp_path):
    src = copy_tree("requests", tmp_path / "requests")
    ingest(str(src), name=repo_name, embedder=hashing)
    with pytest.raises(RepoNotFound, match=r"not ingested; run `grounding ingest") as err:
        ask("no-such-repo", "how are cookies parsed")
    assert repo_name in str(err.value), "the message lists the repositories that do exist"


def test_empty_repository_is_refused_and_writes_nothing(engine, repo_name, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    (root / "blank.py").write_text("\n\n")
    (root / "logo.png").write_bytes(b"\x89PNG\0\0")
    with pytest.raises(EmptyRepository, match=r"no file to index \(2 skipped: 1 binary, 1 empty\)"):
        ingest(str(root), name=repo_name)
    with engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT count(*) FROM repositories WHERE name = :n"), {"n": repo_name}).scalar() == 0
        )


def test_files_with_syntax_errors_are_still_indexed(engine, repo_name, hashing, tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    (root / "half.py").write_text("def intact_function(a):\n    return a + 1\n\ndef cut_off(b:\n    return [b,\n")
    (root / "braces.js").write_text("function survivesBraces() { return 1; }\nfunction broken( {\n")
    ingest(str(root), name=repo_name, embedder=hashing)
    symbols = {p for p, _, _ in visible_chunks(engine, repo_name)}
    assert symbols == {"half.py", "braces.js"}


def test_unreachable_database_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("GROUNDING_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nothing")
    reset_settings()
    with pytest.raises(DatabaseUnavailable, match="cannot reach Postgres at .*127.0.0.1:1.*GROUNDING_DATABASE_URL"):
        db.get_engine()
    assert main(["repos"]) == 1
    assert "grounding: error: cannot reach Postgres" in capsys.readouterr().err


def _backend_pid(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()


def test_a_pooled_connection_the_server_dropped_is_replaced_before_use(engine, monkeypatch):
    engine.dispose()  # one connection in the pool, so the next checkout is the one terminated
    pid = _backend_pid(engine)
    assert _backend_pid(engine) == pid  # back in the pool a moment ago: reused, and not pinged
    outside = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)  # not the pool's own connection
    with outside.connect() as other:
        assert other.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
    outside.dispose()
    time.sleep(0.2)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)  # as if it sat idle: pinged, found dead, replaced
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
        assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() != pid


def test_a_connection_used_a_moment_ago_is_not_pinged(engine, monkeypatch):
    pings = []
    monkeypatch.setattr(engine.dialect, "do_ping", lambda conn: pings.append(conn) or True)
    for _ in range(5):
        _backend_pid(engine)
    assert pings == []
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)
    _backend_pid(engine)
    assert len(pings) == 1


def test_cli_errors_exit_non_zero(engine, capsys, tmp_path):
    assert main(["ingest", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["ask", "nope", "what is this"]) == 1
    assert "repository 'nope' is not ingested" in capsys.readouterr().err


def test_killed_ingest_leaves_last_snapshot_and_rerun_finishes(engine, database_url, repo_name, tmp_path):
    """A real process killed with SIGKILL mid-ingest: the old snapshot answers, a rerun completes without duplicates."""
    src = copy_tree("click", tmp_path / "click")
    later = tmp_path / "later"
    later.mkdir()
    for p in sorted(src.glob("*.py"))[3:]:
        p.rename(later / p.name)
    env = {
        **os.environ,
        "GROUNDING_DATABASE_URL": database_url,
        "GROUNDING_WRITE_BATCH_FILES": "1",
        "GROUNDING_ENCODER": "hashing-64",
    }
    args = ["ingest", str(src), "--name", repo_name, "-q"]
    cmd = [sys.executable, "-m", "grounding.cli", *args]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    before = visible_chunks(engine, repo_name)
    for p in later.iterdir():
        p.rename(src / p.name)
    # The same CLI with a slowed-down encoder, so that the kill lands between batches.
    slow = (
        "import sys, time; from grounding.index import embed; batch = embed.HashingEmbedder.embed_batch; "
        "embed.HashingEmbedder.embed_batch = lambda self, texts: (time.sleep(0.3), batch(self, texts))[1]; "
        f"from grounding.cli import main; sys.exit(main({args!r}))"
    )
    proc = subprocess.Popen([sys.executable, "-c", slow], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    written = 0
    while time.monotonic() < deadline and written < 2:
        time.sleep(0.05)
        with engine.connect() as conn:
            written = conn.execute(
                sa.text(
                    "SELECT count(*) FROM files f JOIN repositories r ON r.id = f.repo_id "
                    "WHERE r.name = :n AND f.snapshot_id > r.current_snapshot_id"
                ),
                {"n": repo_name},
            ).scalar()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert written >= 2, "the kill must land after some batches were written"
    assert visible_chunks(engine, repo_name) == before
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    assert "changed" in done.stdout
    counts = table_counts(engine, repo_name)
    assert counts["files"] == counts["distinct_paths"] == len(list(src.glob("*.py")))
    with engine.connect() as conn:
        statuses = conn.execute(
            sa.text(
                "SELECT s.status, s.error FROM snapshots s JOIN repositories r ON r.id = s.repo_id "
                "WHERE r.name = :n ORDER BY s.id"
            ),
            {"n": repo_name},
        ).all()
    assert [s.status for s in statuses] == ["complete", "failed", "complete"]
    assert "interrupted" in statuses[1].error
