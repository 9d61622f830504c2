"""BM25 in Postgres: the tokens, a score worked by hand, the SQL against it, and statistics kept through re-ingests."""

from __future__ import annotations

import math
import sys

import pytest
import sqlalchemy as sa

from grounding import lexical, store


def test_a_run_too_long_to_be_a_word_is_no_token():
    # A btree key holds 2704 bytes: a 3 KB hex run as one term would make the ingest fail.
    assert lexical.tokens("key = " + "ab" * 1500 + " cookie") == ["key", "cookie"]


def test_tokens_are_bm25s_words_plus_identifier_parts():
    assert lexical.words("The parseHTTPHeader of a file_path") == ["parsehttpheader", "file_path"]
    assert lexical.tokens("The parseHTTPHeader of a file_path") == [
        "parsehttpheader",
        "parse",
        "http",
        "header",
        "file_path",
        "file",
        "path",
    ]
    assert lexical.chunk_tokens("src/http/client.py", "x = 1") == ["src", "http", "client"]


def test_score_matches_a_hand_computed_bm25():
    # Corpus of 3 documents; the question's tokens: "cookie" (df 2) and "jar" (df 1).
    docs = [["cookie", "jar", "cookie", "set"], ["cookie", "header"], ["redirect", "limit", "count"]]
    df = {"cookie": 2, "jar": 1}
    n, avgdl = 3, (4 + 2 + 3) / 3
    # By hand, k1 = 1.5, b = 0.75: idf(cookie) = ln(1 + 1.5/2.5) = 0.470004, idf(jar) = ln(1 + 2.5/1.5) = 0.980829;
    # document 0 has length 4: norm = 1.5 * (0.25 + 0.75 * 4/3) = 1.875;
    # cookie: 0.470004 * 2 / (2 + 1.875) = 0.242583; jar: 0.980829 * 1 / (1 + 1.875) = 0.341158.
    assert lexical.score(["cookie", "jar"], docs[0], df, n, avgdl) == pytest.approx(0.583741, abs=1e-6)
    # A repeated question token counts twice (as in bm25s); a token the document lacks adds nothing.
    assert lexical.score(["jar", "jar"], docs[0], df, n, avgdl) == pytest.approx(2 * 0.341158, abs=1e-6)
    assert lexical.score(["cookie", "jar"], docs[2], df, n, avgdl) == 0
    assert lexical.idf(1, 3) == pytest.approx(math.log(1 + 2.5 / 1.5))


def _write(root, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _visible_docs(engine, repo: str) -> dict[int, list[str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT c.id, f.path, c.text FROM chunks c JOIN files f ON f.id = c.file_id JOIN repositories r "
                "ON r.id = f.repo_id WHERE r.name = :n AND f.snapshot_id <= r.current_snapshot_id"
            ),
            {"n": repo},
        ).all()
    return {cid: lexical.chunk_tokens(path, text) for cid, path, text in rows}


def _stats(engine, repo: str):
    with engine.connect() as conn:
        rid = store.repo_id(conn, repo)
        terms = dict(conn.execute(sa.text("SELECT term, df FROM bm25_terms WHERE repo_id = :r"), {"r": rid}).all())
        docs, length = conn.execute(
            sa.text("SELECT bm25_docs, bm25_length FROM repositories WHERE id = :r"), {"r": rid}
        ).one()
    return rid, terms, docs, length


def test_sql_bm25_equals_the_reference_and_its_statistics_follow_reingests(
    engine, repo_name, hashing, tmp_path, monkeypatch
):
    from grounding.index.ingest import ingest

    root = tmp_path / "corpus"
    _write(
        root,
        {
            "cookies.py": "def merge_cookies(jar, cookies):\n    return jar.update(cookies)\n",
            "redirects.py": "def resolve_redirects(limit):\n    count = 0\n    return count < limit\n",
            "headers.py": "def cookie_header(cookie):\n    return 'Cookie: ' + cookie\n",
        },
    )
    ingest(str(root), name=repo_name, embedder=hashing)
    # A re-ingest changes one file, deletes one and adds one: the kept statistics must move with it.
    _write(root, {"cookies.py": "def merge_cookies(jar, cookie_jar):\n    return jar\n", "new.py": "RETRY = 3\n"})
    (root / "redirects.py").unlink()
    ingest(str(root), name=repo_name, embedder=hashing)

    docs = _visible_docs(engine, repo_name)
    rid, df_kept, n_kept, length_kept = _stats(engine, repo_name)
    df = {}
    for toks in docs.values():
        for t in set(toks):
            df[t] = df.get(t, 0) + 1
    assert (df_kept, n_kept, length_kept) == (df, len(docs), sum(map(len, docs.values())))
    with engine.begin() as conn:
        store.rebuild_bm25_stats(conn, rid)
    assert _stats(engine, repo_name)[1:] == (df_kept, n_kept, length_kept)

    question = lexical.question_tokens("merge the cookie jar")
    avgdl = length_kept / n_kept
    with engine.connect() as conn:
        found = store.bm25_search(conn, rid, question, k=10)
    expected = {cid: lexical.score(question, toks, df, n_kept, avgdl) for cid, toks in docs.items()}
    assert found, "the question shares tokens with the corpus"
    for cid, score in found:
        assert score == pytest.approx(expected[cid], rel=1e-9)
    assert [cid for cid, _ in found] == sorted(
        (c for c, s in expected.items() if s > 0), key=lambda c: (-expected[c], c)
    )
    # Past the posting budget only the rarest term is read: the scores are that term's alone.
    monkeypatch.setattr(sys.modules["grounding.store.search"], "POSTING_BUDGET", 1)
    rarest = min(set(question), key=lambda t: (df.get(t, 10**9), t))
    with engine.connect() as conn:
        budgeted = dict(store.bm25_search(conn, rid, question, k=10))
    only = {
        cid: lexical.score([t for t in question if t == rarest], toks, df, n_kept, avgdl) for cid, toks in docs.items()
    }
    assert budgeted == pytest.approx({c: v for c, v in only.items() if v > 0})


def test_a_failed_run_leaves_the_statistics_of_the_visible_snapshot(engine, repo_name, hashing, tmp_path):
    from grounding.errors import IngestError
    from grounding.index.ingest import ingest

    root = tmp_path / "corpus"
    _write(root, {f"m{i}.py": f"def handler_{i}(request):\n    return {i}\n" for i in range(4)})
    ingest(str(root), name=repo_name, embedder=hashing)
    before = _stats(engine, repo_name)[1:]
    _write(root, {f"n{i}.py": f"def extra_{i}(cookie):\n    return {i}\n" for i in range(4)})

    def crash(batch: int) -> None:
        raise RuntimeError("worker lost")

    with pytest.raises(IngestError):
        ingest(str(root), name=repo_name, embedder=hashing, after_batch=crash)
    assert _stats(engine, repo_name)[1:] == before, "unfinished rows are not counted"
    ingest(str(root), name=repo_name, embedder=hashing)  # reuses what the crashed run wrote
    rid, *after = _stats(engine, repo_name)
    with engine.begin() as conn:
        store.rebuild_bm25_stats(conn, rid)
    assert _stats(engine, repo_name)[1:] == tuple(after) and after[1] == len(_visible_docs(engine, repo_name))


def test_migration_0009_rebuilds_roles_postings_and_statistics_from_stored_chunks(engine, repo_name, hashing, tmp_path):
    """Down to 0008 (no roles, no postings) and up again: the backfill gives what ingest had written."""
    from alembic import command
    from alembic.config import Config

    from grounding import db
    from grounding.index.ingest import ingest

    root = tmp_path / "corpus"
    _write(
        root,
        {
            "pkg/cookies.py": "def merge_cookies(jar, cookies):\n    return jar.update(cookies)\n",
            "tests/test_cookies.py": "def test_merge_cookies():\n    assert merge_cookies({}, {}) is None\n",
            "README.md": "# Cookies\n\nMerge cookie jars.\n",
        },
    )
    ingest(str(root), name=repo_name, embedder=hashing)
    rid, *written = _stats(engine, repo_name)

    def roles():
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT path, role FROM files WHERE repo_id = :r"), {"r": rid}).all()
        return dict(rows)

    def postings():
        with engine.connect() as conn:
            return sorted(
                conn.execute(
                    sa.text("SELECT term, chunk_id, snapshot_id, tf, dl FROM bm25_postings WHERE repo_id = :r"),
                    {"r": rid},
                ).all()
            )

    before = (roles(), postings())
    assert before[0] == {"pkg/cookies.py": "source", "tests/test_cookies.py": "test", "README.md": "docs"}
    config = Config(str(db.MIGRATIONS_DIR.parent / "alembic.ini"))
    config.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0008")
        assert conn.execute(sa.text("SELECT to_regclass('bm25_postings')")).scalar() is None
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    db.reset()
    assert (roles(), postings()) == before
    assert _stats(engine, repo_name) == (rid, *written)
