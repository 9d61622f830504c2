"""The RETRO retrieval database: chunks that are exactly the files' tokens, neighbours that cannot leak."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from grounding import db, store
from grounding.errors import NotIndexed, RepoNotFound
from grounding.evaluation.datasets import split_of
from grounding.index.embed import HashingEmbedder
from grounding.index.ingest import ingest
from grounding.index.lm_tokenizer import LMTokenizer, train_tokenizer
from grounding.index.retro_db import (
    RetroDbConfig,
    build_database,
    chunk_file,
    collect_retired,
    cut_file,
    database_chunks,
    exact_neighbours,
    latest_database,
    neighbour_tokens,
    neighbours,
    repository_texts,
    retrieve,
)
from tests.conftest import copy_tree, git, git_repo, migrate

M = 32
CONFIG = RetroDbConfig(chunk_tokens=M, neighbours=2, encoder="hashing-64")


def make_tokenizer(tree: Path, directory: Path) -> LMTokenizer:
    tokenizer = train_tokenizer([p.read_text(encoding="utf-8") for p in sorted(tree.rglob("*.py"))], vocab_size=2048)
    tokenizer.save(directory)
    return tokenizer


@pytest.fixture
def built(engine, repo_name, hashing, tmp_path):
    """requests, ingested, with a tokenizer trained on it and a retrieval database: (tree, tokenizer, database)."""
    tree = copy_tree("requests", tmp_path / "requests")
    ingest(str(tree), name=repo_name, embedder=hashing)
    tokenizer = make_tokenizer(tree, tmp_path / "tok")
    return tree, tokenizer, build_database(repo_name, tokenizer, config=CONFIG, embedder=hashing)


def file_texts(tree: Path) -> dict[str, str]:
    """The files a database holds: every non-blank one (an ingest skips blank files such as py.typed)."""
    texts = {p.relative_to(tree).as_posix(): p.read_text(encoding="utf-8") for p in tree.rglob("*") if p.is_file()}
    return {path: text for path, text in sorted(texts.items()) if text.strip()}


def count_rows(table: str, database_id: int) -> int:
    with db.get_engine().connect() as conn:
        return conn.execute(
            sa.text(f"SELECT count(*) FROM {table} WHERE database_id = :d"), {"d": database_id}
        ).scalar()


# --- pure ------------------------------------------------------------------------------------------


def test_chunk_file_cuts_consecutive_m_token_spans():
    assert chunk_file(list(range(10)), 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_file(list(range(8)), 4) == [(0, 4), (4, 8)]
    assert chunk_file([7], 4) == [(0, 1)]
    assert chunk_file([], 4) == []
    with pytest.raises(ValueError):
        chunk_file([1, 2], 0)


def test_cut_file_chunks_are_the_file_with_their_lines():
    tokenizer = train_tokenizer(["def f(x):\n    return x\n"] * 5, vocab_size=300)
    text = "def f(x):\r\n\treturn x  \n\n# ünïcode — 世界\nclass A:\n    pass\n"
    rows = cut_file("pkg/a.py", text, tokenizer, 5)
    ids = tokenizer.encode_file(text)
    assert [r[3] for r in rows] == [tuple(ids[a:b]) for a, b in chunk_file(ids, 5)]
    assert [r[2] for r in rows] == list(range(len(rows)))
    assert {r[1] for r in rows} == {split_of("pkg/a.py")}
    assert "".join(r[4] for r in rows) == text
    split_chars = 0
    for r in rows:
        decoded = tokenizer.decode(r[3])
        if "\ufffd" in decoded:
            split_chars += 1  # a boundary cuts a character: it goes with the chunk where it starts
        else:
            assert decoded == r[4]
    assert split_chars  # the 300-token vocabulary splits the unicode characters: the case is exercised
    offset = 0
    for _, _, _, _, chunk, start, end in rows:
        if chunk:
            assert start == text[:offset].count("\n") + 1
            assert end == text[: offset + len(chunk) - 1].count("\n") + 1
        offset += len(chunk)


def test_exact_neighbours_skip_the_same_path_and_heldout_rows():
    vectors = np.array([[1, 0], [1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1]], dtype=np.float32)
    paths = ["a", "a", "b", "c", "d"]
    train = [True, True, True, False, True]
    assert exact_neighbours(vectors, paths, train, k=2) == [[2, 4], [2, 4], [0, 1], [0, 1], [2, 0]]


# --- the database ----------------------------------------------------------------------------------


def test_build_cuts_every_file_into_m_token_chunks_and_is_reused(built, repo_name, hashing):
    tree, tokenizer, database = built
    assert database.status == "ready" and database.repo == repo_name
    assert (database.chunk_tokens, database.encoder, database.dim) == (M, "hashing-64", 64)
    assert database.tokenizer == tokenizer.name
    texts = file_texts(tree)
    chunks = database_chunks(database)
    assert [(c.path, c.ordinal) for c in chunks] == sorted((c.path, c.ordinal) for c in chunks)
    assert {c.path for c in chunks} == set(texts)
    assert len(chunks) == sum(math.ceil(len(tokenizer.encode_file(t)) / M) for t in texts.values())
    for path, text in texts.items():
        mine = [c for c in chunks if c.path == path]
        tokens = [t for c in mine for t in c.tokens]
        assert tokens == tokenizer.encode_file(text), path
        assert all(len(c.tokens) == M for c in mine[:-1]) and 1 <= len(mine[-1].tokens) <= M
        assert {c.split for c in mine} == {split_of(path)}
        assert "".join(c.text for c in mine) == text
        assert all(c.text == tokenizer.decode(c.tokens) for c in mine if "\ufffd" not in tokenizer.decode(c.tokens))
        lines = text.splitlines(keepends=True)
        offset = 0
        for c in mine:
            assert text[offset : offset + len(c.text)] == c.text
            assert c.text in "".join(lines[c.start_line - 1 : c.end_line])
            assert c.start_line == text[:offset].count("\n") + 1
            offset += len(c.text)
    assert repository_texts(repo_name) == list(texts.items())
    assert repository_texts(repo_name, split="heldout") == [
        (p, t) for p, t in texts.items() if split_of(p) == "heldout"
    ]
    train = database_chunks(database, split="train")
    heldout = database_chunks(database, split="heldout")
    assert train and heldout and len(train) + len(heldout) == len(chunks)
    assert {c.split for c in train} == {"train"} and {c.split for c in heldout} == {"heldout"}

    assert build_database(repo_name, tokenizer, config=CONFIG, embedder=hashing) == database
    assert latest_database(repo_name) == database
    assert latest_database(repo_name, tokenizer=tokenizer.name) == database
    with pytest.raises(NotIndexed):
        latest_database(repo_name, tokenizer="/elsewhere")
    with pytest.raises(RepoNotFound):
        latest_database(repo_name + "-missing")


def test_neighbours_come_from_other_train_files_and_are_cached_per_config(built):
    _, _, database = built
    chunks = {c.id: c for c in database_chunks(database)}
    found = neighbours(database, config=CONFIG)
    assert list(found) == list(chunks)  # every chunk, train and held-out, in (path, ordinal) order
    for cid, ids in found.items():
        assert len(ids) == 2 and len(set(ids)) == 2
        assert all(chunks[n].split == "train" and chunks[n].path != chunks[cid].path for n in ids)

    # The index finds what an exact search over the same vectors finds.
    ordered = list(chunks.values())
    vectors = HashingEmbedder(64).embed([c.text for c in ordered])
    exact = exact_neighbours(vectors, [c.path for c in ordered], [c.split == "train" for c in ordered], k=2)
    agree = sum(len(set(found[c.id]) & {ordered[i].id for i in row}) for c, row in zip(ordered, exact))
    assert agree >= 0.95 * 2 * len(ordered)

    # A second call reads the cache: a row changed behind its back comes back as changed.
    rows = count_rows("retro_neighbours", database.id)
    assert rows == len(chunks)
    first = next(iter(chunks))
    with db.get_engine().begin() as conn:
        conn.execute(
            sa.text("UPDATE retro_neighbours SET neighbours = '{-1,-2}' WHERE database_id = :d AND chunk_id = :c"),
            {"d": database.id, "c": first},
        )
    again = neighbours(database, config=CONFIG)
    assert again[first] == [-1, -2] and {c: v for c, v in again.items() if c != first} == {
        c: v for c, v in found.items() if c != first
    }
    assert count_rows("retro_neighbours", database.id) == rows

    # Another k is another cache entry, found afresh.
    three = neighbours(database, config=RetroDbConfig(chunk_tokens=M, neighbours=3, encoder="hashing-64"))
    assert count_rows("retro_neighbours", database.id) == 2 * rows
    assert all(len(ids) == 3 for ids in three.values()) and three[first][0] > 0
    assert sum(three[c][:2] == found[c] for c in chunks) >= 0.9 * len(chunks)

    # Another encoder re-embeds the chunks and searches exactly, under its own key.
    other = neighbours(
        database, config=RetroDbConfig(chunk_tokens=M, neighbours=2, encoder="hashing-32"), embedder=HashingEmbedder(32)
    )
    assert count_rows("retro_neighbours", database.id) == 3 * rows
    for cid, ids in other.items():
        assert len(ids) == 2 and all(chunks[n].split == "train" and chunks[n].path != chunks[cid].path for n in ids)
    assert other != found
    with pytest.raises(ValueError, match="32-token"):
        neighbours(database, config=RetroDbConfig(chunk_tokens=16, encoder="hashing-64"))


def test_neighbour_tokens_append_the_continuation(built):
    _, _, database = built
    chunks = database_chunks(database)
    by_place = {(c.path, c.ordinal): c for c in chunks}
    last_of = {c.path: c for c in chunks}  # (path, ordinal) order: the last one wins
    middle = next(c for c in chunks if (c.path, c.ordinal + 1) in by_place and c.split == "train")
    last = next(c for c in chunks if last_of[c.path] is c and c.ordinal > 0)
    got = neighbour_tokens(database, [middle.id, last.id, middle.id])
    assert [n.chunk_id for n in got] == [middle.id, last.id, middle.id]
    follow = by_place[(middle.path, middle.ordinal + 1)]
    assert got[0].tokens == middle.tokens + follow.tokens
    assert len(got[0].tokens) == 2 * M or follow is last_of[middle.path]
    assert got[0].text == middle.text + follow.text
    assert (got[0].path, got[0].start_line, got[0].end_line) == (middle.path, middle.start_line, follow.end_line)
    assert got[1].tokens == last.tokens and len(got[1].tokens) <= M and got[1].end_line == last.end_line
    assert got[0].commit == database.commit
    with pytest.raises(ValueError, match="not in retrieval database"):
        neighbour_tokens(database, [-5])


def test_retrieve_returns_train_chunks_outside_the_excluded_path(built, hashing):
    _, _, database = built
    chunks = database_chunks(database, split="train")
    target = max(chunks, key=lambda c: len(set(c.text.split())))
    hits = retrieve(database, target.text, k=5, embedder=hashing)
    assert len(hits) == 5 and hits[0].chunk_id == target.id and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    away = retrieve(database, target.text, k=5, exclude_paths=[target.path], embedder=hashing)
    assert len(away) == 5 and all(h.path != target.path for h in away)
    train = {c.id for c in chunks}
    assert all(h.chunk_id in train for h in hits + away)
    heldout = max(database_chunks(database, split="heldout"), key=lambda c: len(set(c.text.split())))
    assert heldout.id not in {h.chunk_id for h in retrieve(database, heldout.text, k=5, embedder=hashing)}
    # Serving reads every file: the split is a training-time notion.
    served = retrieve(database, heldout.text, k=5, embedder=hashing, train_only=False)
    assert served[0].chunk_id == heldout.id and served[0].path == heldout.path
    with pytest.raises(ValueError, match="embedded with"):
        retrieve(database, "x", k=1, embedder=HashingEmbedder(32))


def test_ingest_brings_the_database_to_the_new_snapshot_re_embedding_changed_files_only(
    engine, repo_name, hashing, tmp_path
):
    tree = git_repo(copy_tree("requests", tmp_path / "requests"))
    ingest(str(tree), name=repo_name, embedder=hashing)
    tokenizer = make_tokenizer(tree, tmp_path / "tok")
    database = build_database(repo_name, tokenizer, config=CONFIG, embedder=hashing)
    neighbours(database, config=CONFIG)
    before = {c.path: c for c in database_chunks(database)}
    ids_before = {c.id for c in database_chunks(database) if c.path == "models.py"}

    (tree / "api.py").write_text((tree / "api.py").read_text() + "\n\ndef brand_new_helper():\n    return 42\n")
    (tree / "fresh.py").write_text("def freshly_added_module_function(first, second):\n    return first * second\n")
    git(tree, "rm", "-q", "hooks.py")
    git(tree, "add", "fresh.py")
    git(tree, "commit", "-qam", "a helper, a new file, a file gone")
    report = ingest(str(tree), name=repo_name, embedder=hashing)

    with db.get_engine().connect() as conn:
        row = store.retro_database(conn, database.id)
    assert row["status"] == "ready" and row["snapshot_id"] == report.snapshot_id
    assert row["commit"] == git(tree, "rev-parse", "HEAD")
    after = database_chunks(database)
    recut = sum(c.path in ("api.py", "fresh.py") for c in after)
    assert row["stats"]["followed"] == {"snapshot": report.snapshot_id, "changed": 2, "deleted": 1, "chunks": recut}
    assert row["stats"]["chunks"] == len(after) and row["stats"]["tokens"] == sum(len(c.tokens) for c in after)
    assert row["stats"]["train_chunks"] == sum(c.split == "train" for c in after)
    paths = {c.path for c in after}
    assert "hooks.py" not in paths and "fresh.py" in paths and set(before) - {"hooks.py"} <= paths
    assert any("brand_new_helper" in c.text for c in after if c.path == "api.py")
    assert {c.id for c in after if c.path == "models.py"} == ids_before, "an unchanged file keeps its rows"
    assert count_rows("retro_neighbours", database.id) == 0, "training's cached neighbours went with the old rows"
    found = retrieve(database, "freshly_added_module_function(first, second)", k=1, embedder=hashing, train_only=False)
    assert found[0].path == "fresh.py"
    # The database is what a build from these files would make: the next train-retro reuses it.
    assert build_database(repo_name, tokenizer, config=CONFIG, embedder=hashing).id == database.id
    # The texts it holds are the files' (chunk by chunk, re-cut files included).
    joined = {}
    for c in after:
        joined[c.path] = joined.get(c.path, "") + c.text
    assert joined == {path: (tree / path).read_text(encoding="utf-8") for path in joined}
    assert set(joined) == {p for p in git(tree, "ls-files").split() if (tree / p).read_text().strip()}


def test_migration_0013_indexes_every_chunk_and_goes_back_to_train_chunks_only(built):
    _, _, database = built

    def index() -> str:
        with db.get_engine().connect() as conn:
            return conn.execute(
                sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :i"),
                {"i": f"retro_chunks_hnsw_d{database.id}"},
            ).scalar()

    assert "split" not in index() and f"database_id = {database.id}" in index()
    try:
        migrate("0012")
        assert "split = 'train'" in index()
    finally:
        migrate("head")
    assert "split" not in index()
    heldout = database_chunks(database, split="heldout")[0]
    assert retrieve(database, heldout.text, k=1, embedder=HashingEmbedder(64), train_only=False)


def test_files_deleted_since_the_database_was_built_are_named_for_serving_to_skip(engine, repo_name, hashing, tmp_path):
    from grounding.index.retro_db import paths_gone

    tree = git_repo(copy_tree("requests", tmp_path / "requests"))
    ingest(str(tree), name=repo_name, embedder=hashing)
    database = build_database(repo_name, make_tokenizer(tree, tmp_path / "tok"), config=CONFIG, embedder=hashing)
    assert paths_gone(database) == []
    git(tree, "rm", "-q", "certs.py", "hooks.py")
    git(tree, "commit", "-qm", "drop two files")
    with pytest.MonkeyPatch.context() as patch:  # as when the database could not follow the ingest
        patch.setattr("grounding.index.ingest._follow_retro", lambda *args: None)
        ingest(str(tree), name=repo_name, embedder=hashing)
    assert paths_gone(database) == ["certs.py", "hooks.py"]
    # The next ingest, though it changes nothing, finds the database behind its files and brings it along.
    report = ingest(str(tree), name=repo_name, embedder=hashing)
    assert report.files_changed == report.files_deleted == 0
    assert paths_gone(database) == [] and not {"certs.py", "hooks.py"} & {c.path for c in database_chunks(database)}


def test_a_changed_repository_gets_a_new_database_and_retires_the_old(
    engine, repo_name, hashing, tmp_path, monkeypatch
):
    # A database that did not follow the ingest (its tokenizer is on another host) is replaced by the next build.
    monkeypatch.setattr("grounding.index.ingest._follow_retro", lambda *args: None)
    tree = git_repo(copy_tree("requests", tmp_path / "requests"))
    ingest(str(tree), name=repo_name, embedder=hashing)
    tokenizer = make_tokenizer(tree, tmp_path / "tok")
    with pytest.raises(NotIndexed):
        latest_database(repo_name)
    old = build_database(repo_name, tokenizer, config=CONFIG, embedder=hashing)
    assert old.commit == git(tree, "rev-parse", "HEAD")
    neighbours(old, config=CONFIG)

    (tree / "api.py").write_text((tree / "api.py").read_text() + "\n\ndef brand_new_helper():\n    return 42\n")
    git(tree, "commit", "-qam", "a helper")
    ingest(str(tree), name=repo_name, embedder=hashing)
    new = build_database(repo_name, tokenizer, config=CONFIG, embedder=hashing)
    assert new.id != old.id and new.status == "ready" and new.commit == git(tree, "rev-parse", "HEAD")
    assert latest_database(repo_name) == new
    with db.get_engine().connect() as conn:
        assert store.retro_database(conn, old.id)["status"] == "retired"
    assert any("brand_new_helper" in c.text for c in database_chunks(new) if c.path == "api.py")
    assert not any("brand_new_helper" in c.text for c in database_chunks(old))
    # The new database's neighbours are its own: another id, another cache.
    fresh = neighbours(new, config=CONFIG)
    assert set(fresh) == {c.id for c in database_chunks(new)} and not set(fresh) & {c.id for c in database_chunks(old)}

    # Retired, it is collected once the grace period is over: its rows and index go, its record stays.
    assert collect_retired(repo_name) == [], "within the grace period"
    assert collect_retired(repo_name, grace_seconds=0) == [old.id]
    with db.get_engine().connect() as conn:
        assert store.retro_database(conn, old.id)["status"] == "collected"
        assert store.retro_database(conn, old.id)["stats"]["chunks"] > 0, "what it held is still on record"
        for table in ("retro_chunks", "retro_neighbours"):
            left = conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE database_id = :d"), {"d": old.id})
            assert left.scalar() == 0, table
        index = conn.execute(sa.text("SELECT to_regclass(:i)"), {"i": f"retro_chunks_hnsw_d{old.id}"}).scalar()
        assert (
            index is None
            and conn.execute(sa.text("SELECT to_regclass(:i)"), {"i": f"retro_chunks_hnsw_d{new.id}"}).scalar()
        )
    assert latest_database(repo_name) == new and database_chunks(new)
    assert retrieve(new, "brand_new_helper", k=1, embedder=hashing)
    assert collect_retired(repo_name, grace_seconds=0) == [], "collected once"

    # Another chunk length is another database beside it; neither retires the other.
    short = build_database(repo_name, tokenizer, config=RetroDbConfig(16, 2, "hashing-64"), embedder=hashing)
    assert short.id != new.id and latest_database(repo_name) == short
    with db.get_engine().connect() as conn:
        assert store.retro_database(conn, new.id)["status"] == "ready"


def test_a_neighbour_is_aligned_to_the_chunk_that_retrieves_it():
    """Its first half ends where the retrieving chunk's text ends in that file, so its second half is what follows."""
    from grounding.index.retro_db import aligned_window

    file = list(range(100, 300))  # every token distinct
    assert aligned_window(file[37:45], file, 40, r=16, pad=0) == tuple(file[37:53]), "the stored chunk began at 40"
    edited = [1, 2, 3, 4, *file[60:64]]  # an edit before; the last 4 tokens are still in the file
    assert aligned_window(edited, file, 56, r=16, pad=0) == tuple(file[56:72])
    assert aligned_window([7, 7, 7, 7, *file[:4]], file, 0, r=16, pad=0) == (0, 0, 0, 0, *file[:12]), "padded in front"
    assert aligned_window([1, 2, 3, 4, 5, 6, 7, 8], file, 8, r=16, pad=0) == tuple(file[8:24]), "nothing shared"
