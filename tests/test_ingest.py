"""Ingest against the real Postgres with pgvector: incremental, deletion, crash and rerun, concurrency."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from grounding import store
from grounding.cli import main
from grounding.config import reset_settings
from grounding.errors import IngestBusy, IngestError
from grounding.index.embed import HashingEmbedder
from grounding.index.ingest import ingest
from grounding.search.retrieve import search
from tests.conftest import copy_tree


def visible_chunks(engine, name: str) -> dict[tuple[str, int, int], int]:
    """(path, start_line, end_line) -> chunk id of everything queries can see."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT f.path, c.start_line, c.end_line, c.id FROM chunks c JOIN files f ON f.id = c.file_id "
                "JOIN repositories r ON r.id = f.repo_id "
                "WHERE r.name = :n AND f.snapshot_id <= r.current_snapshot_id"
            ),
            {"n": name},
        ).all()
    return {(p, s, e): cid for p, s, e, cid in rows}


def table_counts(engine, name: str) -> dict[str, int]:
    with engine.connect() as conn:
        rid = store.repo_id(conn, name)
        one = lambda sql: conn.execute(sa.text(sql), {"r": rid}).scalar_one()  # noqa: E731
        return {
            "files": one("SELECT count(*) FROM files WHERE repo_id = :r"),
            "distinct_paths": one("SELECT count(DISTINCT path) FROM files WHERE repo_id = :r"),
            "chunks": one("SELECT count(*) FROM chunks WHERE repo_id = :r"),
            "embeddings": one(
                "SELECT count(*) FROM embeddings e JOIN chunks c ON c.id = e.chunk_id WHERE c.repo_id = :r"
            ),
        }


def test_first_ingest_writes_files_chunks_and_vectors(engine, repo_name, hashing, tmp_path):
    src = copy_tree("click", tmp_path / "click")
    report = ingest(str(src), name=repo_name, embedder=hashing)
    py_files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.py"))
    assert report.files_changed >= len(py_files)
    counts = table_counts(engine, repo_name)
    assert counts["files"] == counts["distinct_paths"] == report.files_changed
    assert counts["chunks"] == counts["embeddings"] == report.chunks_added > 100
    with engine.connect() as conn:
        rid = store.repo_id(conn, repo_name)
        version = store.active_index_version(conn, rid)
        assert version.encoder == "hashing-64" and version.dim == 64
        index = conn.execute(
            sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :i"), {"i": f"embeddings_hnsw_v{version.id}"}
        ).scalar_one()
    assert "hnsw" in index and "halfvec(64)" in index and "halfvec_ip_ops" in index


def test_unchanged_reingest_changes_nothing(engine, repo_name, hashing, tmp_path):
    src = copy_tree("click", tmp_path / "click")
    ingest(str(src), name=repo_name, embedder=hashing)
    before = visible_chunks(engine, repo_name)
    report = ingest(str(src), name=repo_name)
    assert (report.files_changed, report.chunks_added, report.chunks_removed, report.embeddings_computed) == (
        0,
        0,
        0,
        0,
    )
    assert report.chunks_unchanged == len(before)
    assert visible_chunks(engine, repo_name) == before


def test_changing_one_file_rewrites_only_its_chunks(engine, repo_name, hashing, tmp_path):
    src = copy_tree("click", tmp_path / "click")
    ingest(str(src), name=repo_name, embedder=hashing)
    before = visible_chunks(engine, repo_name)
    with open(src / "termui.py", "a") as f:
        f.write("\n\ndef frobnicate_widget_gadget(level):\n    return level * 42\n")
    report = ingest(str(src), name=repo_name)
    after = visible_chunks(engine, repo_name)
    assert report.files_changed == 1
    assert {k: v for k, v in before.items() if k[0] != "termui.py"} == {
        k: v for k, v in after.items() if k[0] != "termui.py"
    }, "chunks of untouched files must keep their rows"
    # Only the new function's chunk needs the encoder; the file's other chunks reuse their vectors.
    assert report.embeddings_computed <= 2 < report.embeddings_reused
    hits = search(repo_name, "frobnicate widget gadget", k=3, mode="lexical")
    assert hits[0].citation.path == "termui.py" and hits[0].citation.symbol == "frobnicate_widget_gadget"
    assert table_counts(engine, repo_name)["files"] == table_counts(engine, repo_name)["distinct_paths"]


def test_deleted_file_disappears(engine, repo_name, hashing, tmp_path):
    src = copy_tree("click", tmp_path / "click")
    ingest(str(src), name=repo_name, embedder=hashing)
    assert any(p == "shell_completion.py" for p, _, _ in visible_chunks(engine, repo_name))
    (src / "shell_completion.py").unlink()
    report = ingest(str(src), name=repo_name)
    assert report.files_deleted == 1 and report.chunks_removed > 0
    assert not any(p == "shell_completion.py" for p, _, _ in visible_chunks(engine, repo_name))
    hits = search(repo_name, "ShellComplete source_template", k=5, mode="lexical")
    assert all(h.citation.path != "shell_completion.py" for h in hits)


def test_crash_between_batches_keeps_previous_snapshot_and_rerun_completes(
    engine, repo_name, hashing, tmp_path, monkeypatch, capsys
):
    src = copy_tree("click", tmp_path / "click")
    ingest(str(src), name=repo_name, embedder=hashing)
    before = visible_chunks(engine, repo_name)
    changed = sorted(p for p in src.glob("*.py"))[:8]
    for p in changed:
        p.write_text(p.read_text() + "\n\ndef added_after_crash_marker():\n    return 1\n")
    monkeypatch.setenv("GROUNDING_WRITE_BATCH_FILES", "3")
    reset_settings()

    def crash(batch: int) -> None:
        if batch == 1:
            raise RuntimeError("injected crash between batches")

    with pytest.raises(IngestError, match="previous snapshot stays active"):
        ingest(str(src), name=repo_name, after_batch=crash)
    # Two batches were written, yet queries still see exactly the previous snapshot.
    assert visible_chunks(engine, repo_name) == before
    hits = search(repo_name, "added_after_crash_marker", k=10, mode="lexical")
    assert all(h.citation.symbol != "added_after_crash_marker" for h in hits)
    with engine.connect() as conn:
        last = conn.execute(
            sa.text(
                "SELECT status, error FROM snapshots s JOIN repositories r ON r.id = s.repo_id "
                "WHERE r.name = :n ORDER BY s.id DESC LIMIT 1"
            ),
            {"n": repo_name},
        ).one()
    assert last.status == "failed" and "injected crash" in last.error
    assert main(["repos"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(repo_name))
    assert "failed: RuntimeError: injected crash between batches" in row

    report = ingest(str(src), name=repo_name)
    assert report.files_changed == len(changed) - 6, "the rerun reuses the 6 files the crashed run wrote"
    counts = table_counts(engine, repo_name)
    assert counts["files"] == counts["distinct_paths"], "no duplicate file rows"
    assert counts["chunks"] == counts["embeddings"] == len(visible_chunks(engine, repo_name))
    hits = search(repo_name, "added_after_crash_marker", k=20, mode="lexical")
    assert {h.citation.path for h in hits if h.citation.symbol == "added_after_crash_marker"} == {
        p.name for p in changed
    }


def test_concurrent_ingests_of_one_repo_do_not_interleave(engine, repo_name, hashing, tmp_path):
    src = copy_tree("click", tmp_path / "click")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            ingest(str(src), name=repo_name, embedder=hashing)
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with engine.connect() as conn:
        snaps = conn.execute(
            sa.text(
                "SELECT s.started_at, s.finished_at, s.status, s.stats FROM snapshots s "
                "JOIN repositories r ON r.id = s.repo_id WHERE r.name = :n ORDER BY s.id"
            ),
            {"n": repo_name},
        ).all()
    assert [s.status for s in snaps] == ["complete", "complete"]
    assert snaps[0].finished_at <= snaps[1].started_at, "the second ingest ran only after the first finished"
    assert snaps[1].stats["files_changed"] == 0
    counts = table_counts(engine, repo_name)
    assert counts["files"] == counts["distinct_paths"]


def test_ingest_without_waiting_reports_busy(engine, repo_name, hashing, tmp_path):
    src = copy_tree("click", tmp_path / "click")
    with store.repo_lock(engine, repo_name):
        with pytest.raises(IngestBusy, match="being ingested"):
            ingest(str(src), name=repo_name, embedder=hashing, wait=False)


def test_a_derived_copy_reuses_the_vectors_of_equal_chunks_and_an_unrelated_one_does_not(
    engine, repo_name, hashing, tmp_path
):
    first = ingest(str(copy_tree("requests", tmp_path / "a")), name=repo_name + "-a", embedder=hashing)
    copy = copy_tree("requests", tmp_path / "b")
    (copy / "extra.py").write_text("def brand_new_function():\n    return 42\n")
    derived = f"{repo_name}-a~eval-docstrings"
    second = ingest(str(copy), name=derived, embedder=hashing, derived_from=repo_name + "-a")
    assert first.embeddings_computed > 100
    assert second.embeddings_computed == 1  # only the new file's chunk met the encoder
    # An unrelated repository borrows nothing: its reuse counts would reveal another repository's chunks.
    other = ingest(str(copy), name=repo_name + "-b", embedder=hashing)
    assert other.embeddings_computed == first.embeddings_computed + 1
    # Another encoder's vectors are never borrowed.
    third = ingest(
        str(copy_tree("requests", tmp_path / "c")),
        name=f"{repo_name}-a~eval-commits",
        embedder=HashingEmbedder(32),
        derived_from=repo_name + "-a",
    )
    assert third.embeddings_computed == first.embeddings_computed
