"""Reindex beside the active version, atomic swap, no mixed answers; refresh when the commit moves."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from grounding import db, store
from grounding.errors import IngestError
from grounding.index.embed import HashingEmbedder
from grounding.index.ingest import ingest
from grounding.index.refresh import refresh
from grounding.index.reindex import reindex
from grounding.search.retrieve import search
from tests.conftest import copy_tree, git, git_repo


def versions(name: str) -> list[dict]:
    with db.get_engine().connect() as conn:
        return store.index_versions(conn, store.repo_id(conn, name))


def test_reindex_builds_beside_and_swaps_atomically_under_load(engine, repo_name, hashing, tmp_path, monkeypatch):
    src = copy_tree("click", tmp_path / "click")
    ingest(str(src), name=repo_name, embedder=hashing)
    old = versions(repo_name)[0]
    question = "prompt the user for a confirmation"
    stop = threading.Event()
    seen: list[tuple[int, tuple[int, ...]]] = []  # (version used, ranked chunk ids)
    spans: list[tuple[float, float, int]] = []  # (asked at, answered at, version used)
    failures: list[BaseException] = []

    def query_forever() -> None:
        while not stop.is_set():
            try:
                asked = time.monotonic()
                hits = search(repo_name, question, k=5, mode="vector")
                assert len(hits) == 5 and len({h.index_version for h in hits}) == 1
                spans.append((asked, time.monotonic(), hits[0].index_version))
                seen.append((hits[0].index_version, tuple(h.chunk_id for h in hits)))
            except BaseException as err:  # noqa: BLE001 — surfaced by the assertion below
                failures.append(err)
                return

    slow = HashingEmbedder(96)
    batch = slow.embed_batch
    monkeypatch.setattr(slow, "embed_batch", lambda texts: (time.sleep(0.05), batch(texts))[1])
    threads = [threading.Thread(target=query_forever) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        report = reindex(repo_name, embedder=slow, grace_seconds=3600)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:1]
    used = [v for _, _, v in sorted(spans)]
    assert used[0] == old["id"] and used[-1] == report.version and len(seen) > 5
    # Once the new version had answered, no question asked after that got the old one (two threads append
    # in whichever order they finish, so the order of answers alone proves nothing).
    first_new = min(answered for _, answered, v in spans if v == report.version)
    late = [asked - first_new for asked, _, v in spans if v == old["id"] and asked > first_new]
    assert not late, f"the old version answered questions asked {late} s after the new one answered"
    # An answer is one version's ranking, never a mix: each version always gave the same one.
    assert len({ids for v, ids in seen if v == old["id"]}) == 1
    assert len({ids for v, ids in seen if v == report.version}) == 1
    after = {v["id"]: v for v in versions(repo_name)}
    assert after[report.version]["status"] == "active" and after[report.version]["dim"] == 96
    assert after[old["id"]]["status"] == "retired" and after[old["id"]]["vectors"] > 0, "kept for the grace period"
    hits = search(repo_name, question, k=3, mode="vector")
    with engine.connect() as conn:
        used = (
            conn.execute(
                sa.text(
                    "SELECT DISTINCT index_version_id FROM embeddings "
                    "WHERE chunk_id = ANY(:i) AND index_version_id = :v"
                ),
                {"i": [h.chunk_id for h in hits], "v": report.version},
            )
            .scalars()
            .all()
        )
    assert used == [report.version]

    # The next reindex with no grace period collects the retired version's vectors.
    again = reindex(repo_name, embedder=HashingEmbedder(64), grace_seconds=0)
    gone = {v["id"]: v for v in versions(repo_name)}
    assert old["id"] in again.collected and gone[old["id"]]["vectors"] == 0


def test_reindex_killed_midway_leaves_the_old_version_active(engine, repo_name, hashing, tmp_path, monkeypatch):
    src = copy_tree("click", tmp_path / "click")
    ingest(str(src), name=repo_name, embedder=hashing)
    monkeypatch.setattr("grounding.index.reindex.PAGE", 100)
    before = search(repo_name, "format a help page", k=5, mode="vector")

    def die(page: int) -> None:
        if page == 2:
            raise RuntimeError("worker lost")

    with pytest.raises(IngestError, match="stays active"):
        reindex(repo_name, embedder=HashingEmbedder(32), after_page=die)
    states = {v["status"] for v in versions(repo_name)}
    assert states == {"active", "failed"}
    failed = next(v for v in versions(repo_name) if v["status"] == "failed")
    assert failed["vectors"] == 0 and "worker lost" in failed["note"]
    assert search(repo_name, "format a help page", k=5, mode="vector") == before


def test_refresh_ingests_only_when_the_commit_moves(engine, repo_name, hashing, tmp_path):
    origin = git_repo(copy_tree("requests", tmp_path / "origin"))
    url = f"file://{origin}"
    ingest(url, name=repo_name, embedder=hashing)
    unchanged = refresh(repo_name)
    assert unchanged.action == "unchanged" and "still at" in unchanged.reason

    (origin / "status_codes.py").write_text((origin / "status_codes.py").read_text() + "\nteapot_refreshed = 418\n")
    git(origin, "commit", "-qam", "a change")
    moved = refresh(repo_name)
    assert moved.action == "ingested" and moved.commit_after == git(origin, "rev-parse", "HEAD")
    assert moved.report.files_changed == 1 and moved.report.embeddings_computed <= 2
    assert refresh(repo_name).action == "unchanged"


def test_refresh_follows_a_local_checkout(engine, repo_name, hashing, tmp_path):
    local = git_repo(copy_tree("requests", tmp_path / "local"))
    ingest(str(local), name=repo_name, embedder=hashing)
    assert refresh(repo_name).action == "unchanged"
    (local / "hooks.py").write_text((local / "hooks.py").read_text() + "\n# touched\n")
    git(local, "commit", "-qam", "local change")
    moved = refresh(repo_name)
    assert moved.action == "ingested" and moved.report.files_changed == 1
    assert moved.commit_after == git(local, "rev-parse", "HEAD")
