"""Index vectors are stored as halfvec and searched through a halfvec HNSW index; migration 0012 converts both ways."""

from __future__ import annotations

import time

import numpy as np
import pytest
import sqlalchemy as sa

from grounding import store
from grounding.search.retrieve import search
from grounding.store.versions import parse_vector
from tests.conftest import migrate, write_tree

FILES = {
    "pkg/cookies.py": "def merge_cookies(jar, cookies):\n    return jar.update(cookies)\n",
    "pkg/redirects.py": "def follow_redirects(response, limit=30):\n    return response.next(limit)\n",
    "pkg/timeouts.py": "def connect_timeout(seconds):\n    return max(0.0, float(seconds))\n",
}


def _version(engine, repo_name):
    with engine.connect() as conn:
        rid = conn.execute(sa.text("SELECT id FROM repositories WHERE name = :n"), {"n": repo_name}).scalar()
        return store.active_index_version(conn, rid)


def _storage(engine, vid: int) -> tuple[str, str]:
    """(the column's type, the version's HNSW index definition)."""
    with engine.connect() as conn:
        column = conn.execute(
            sa.text(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'embeddings'::regclass AND attname = 'embedding'"
            )
        ).scalar()
        index = conn.execute(
            sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :i"), {"i": f"embeddings_hnsw_v{vid}"}
        ).scalar()
    return column, index


def _index_scans(engine, vid: int) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = :i"),
                {"i": f"embeddings_hnsw_v{vid}"},
            ).scalar()
        )


def _ranked(repo_name: str, question: str) -> list[str]:
    return [h.citation.path for h in search(repo_name, question, mode="vector", k=3, merge=False, expand=False)]


def test_vector_search_reads_the_halfvec_index_and_ranks_as_exact_search(
    engine, repo_name, hashing, tmp_path, monkeypatch
):
    from grounding import db
    from grounding.index.ingest import ingest

    ingest(str(write_tree(tmp_path / "corpus", FILES)), name=repo_name, embedder=hashing)
    version = _version(engine, repo_name)
    column, index = _storage(engine, version.id)
    assert column == "halfvec"
    assert "halfvec_ip_ops" in index and f"halfvec({version.dim})" in index

    question = "merge the cookies into the jar"
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT f.path, e.embedding::text FROM embeddings e JOIN chunks c ON c.id = e.chunk_id "
                "JOIN files f ON f.id = c.file_id WHERE e.index_version_id = :v"
            ),
            {"v": version.id},
        ).all()
    q = hashing.embed([question])[0]
    exact = sorted(rows, key=lambda r: -float(parse_vector(r[1]) @ q))
    # Three rows are cheaper to scan than to search: the planner must take the index whenever it can.
    monkeypatch.setenv("PGOPTIONS", "-c enable_seqscan=off")
    db.reset()
    try:
        before = _index_scans(engine, version.id)
        assert _ranked(repo_name, question) == [path for path, _ in exact][:3]
        # The search went through the HNSW index (a cast to another type would scan the table and sort):
        # a backend publishes its statistics when its connection closes.
        db.reset()
        deadline = time.monotonic() + 10
        while _index_scans(engine, version.id) == before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _index_scans(engine, version.id) > before
    finally:
        monkeypatch.delenv("PGOPTIONS")
        db.reset()  # the next test's connections without the setting


def test_migration_0012_converts_vectors_and_indexes_both_ways_and_keeps_the_ranking(
    engine, repo_name, hashing, tmp_path
):
    from grounding.index.ingest import ingest

    ingest(str(write_tree(tmp_path / "corpus", FILES)), name=repo_name, embedder=hashing)
    version = _version(engine, repo_name)
    question = "follow the redirects up to a limit"
    ranked = _ranked(repo_name, question)

    def vectors() -> np.ndarray:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT embedding::text FROM embeddings WHERE index_version_id = :v ORDER BY chunk_id"),
                {"v": version.id},
            ).scalars()
            return np.stack([parse_vector(r) for r in rows])

    stored = vectors()
    try:
        migrate("0011")
        column, index = _storage(engine, version.id)
        assert column == "vector" and "vector_ip_ops" in index and f"vector({version.dim})" in index
        np.testing.assert_array_equal(vectors(), stored)  # halfvec -> vector is exact
    finally:
        migrate("head")
    column, index = _storage(engine, version.id)
    assert column == "halfvec" and "halfvec_ip_ops" in index
    np.testing.assert_array_equal(vectors(), stored)
    assert _ranked(repo_name, question) == ranked


def test_vectors_halfvec_cannot_hold_are_refused_before_anything_is_written(engine, repo_name, tmp_path):
    from grounding.errors import IngestError
    from grounding.index.embed import HashingEmbedder
    from grounding.index.ingest import ingest

    class Unnormalised(HashingEmbedder):
        def embed_batch(self, texts):
            return super().embed_batch(texts) * 1e6  # beyond a 16-bit float's 65504

    root = write_tree(tmp_path / "corpus", FILES)
    with pytest.raises(IngestError, match="not finite or exceed 65504"):
        ingest(str(root), name=repo_name, embedder=Unnormalised(64))
    with engine.connect() as conn:
        visible = conn.execute(
            sa.text("SELECT current_snapshot_id FROM repositories WHERE name = :n"), {"n": repo_name}
        ).scalar()
    assert visible is None, "no snapshot became visible"


def test_the_hnsw_candidate_list_grows_with_the_index(engine, repo_name, hashing, tmp_path, monkeypatch):
    """hnsw.ef_search is EF_SEARCH per EF_ROWS indexed vectors (at least EF_SEARCH), as the search sets it."""
    from grounding.index.ingest import ingest
    from grounding.store import search as store_search

    ingest(str(write_tree(tmp_path / "corpus", FILES)), name=repo_name, embedder=hashing)
    version = _version(engine, repo_name)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:i)"),
            {"i": f"embeddings_hnsw_v{version.id}"},
        ).scalar()
    assert rows == len(FILES)  # one chunk a file, counted when the index was built
    seen: list[str] = []

    def statements(conn, cursor, statement, *args):
        if "hnsw.ef_search" in statement:
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", statements)
    try:
        store_search._ef_cache.clear()
        _ranked(repo_name, "merge the cookies")
        assert seen[-1].endswith("= 100")  # three vectors: the floor
        monkeypatch.setattr(store_search, "EF_ROWS", 1)  # as if each vector were EF_ROWS of them
        store_search._ef_cache.clear()
        _ranked(repo_name, "merge the cookies")
        assert seen[-1].endswith(f"= {100 * len(FILES)}")
    finally:
        sa.event.remove(engine, "before_cursor_execute", statements)
        store_search._ef_cache.clear()
