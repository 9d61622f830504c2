"""Deleting a repository (grounding.index.remove, `grounding delete`, DELETE /v1/repos/NAME) against the real
Postgres: every row of it and of its eval indexes goes, its files under GROUNDING_HOME go, and nothing of
another repository, nothing another repository uses, and nothing outside GROUNDING_HOME is touched."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa

from grounding import access, db, store, tokens
from grounding.cli import main
from grounding.config import get_settings
from grounding.errors import IngestBusy, RepoNotFound
from grounding.index import sources
from grounding.index.ingest import ingest
from grounding.index.remove import remove_repo
from tests.conftest import running, visible_vectors
from tests.conftest import write_tree as tree

OWNED = (  # (table, how its rows name the repository)
    ("files", "repo_id"),
    ("chunks", "repo_id"),
    ("snapshots", "repo_id"),
    ("index_versions", "repo_id"),
    ("bm25_postings", "repo_id"),
    ("bm25_terms", "repo_id"),
    ("grants", "repo_id"),
    ("training_runs", "repo_id"),
    ("eval_runs", "repo_id"),
)


def rows_of(engine, repo_id: int) -> dict[str, int]:
    with engine.connect() as conn:
        found = {
            t: conn.execute(sa.text(f"SELECT count(*) FROM {t} WHERE {c} = :r"), {"r": repo_id}).scalar()
            for t, c in OWNED
        }
        found["embeddings"] = conn.execute(
            sa.text(
                "SELECT count(*) FROM embeddings e JOIN index_versions v ON v.id = e.index_version_id "
                "WHERE v.repo_id = :r"
            ),
            {"r": repo_id},
        ).scalar()
    return found


def repo_id(engine, name: str) -> int:
    with engine.connect() as conn:
        return store.repo_id(conn, name)


def add_run(engine, repo: int, *, fresh: bool) -> int:
    """A training run row of `repo` marked running, with a fresh or an hour-old heartbeat."""
    with engine.begin() as conn:
        run = store.insert_training_run(conn, repo, kind="realm", config={}, device="cpu", host="elsewhere", pid=1)
        if not fresh:
            conn.execute(
                sa.text("UPDATE training_runs SET heartbeat_at = now() - interval '1 hour' WHERE id = :i"), {"i": run}
            )
    return run


@contextlib.contextmanager
def lock_held_elsewhere(name: str):
    """Repository `name`'s lock held by another connection (an ingest), for the duration of the block."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with store.repo_lock(db.get_engine(), name):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        yield
    finally:
        release.set()
        holder.join()


@pytest.fixture
def two(engine, repo_name, hashing, tmp_path):
    """Repository `gone` (with an eval index derived from it, a grant, a training run, its checkout, eval and RETRO
    directories, and a legacy-named eval directory) and repository `kept`, both ingested."""
    names = {"gone": f"{repo_name}-gone", "kept": f"{repo_name}-kept", "user": f"u-{uuid.uuid4().hex[:6]}"}
    sources_ = {
        "gone": tree(tmp_path / "src-gone", {"pay/bonus.py": "def compute_bonus(salary):\n    return salary * 0.42\n"}),
        "kept": tree(tmp_path / "src-kept", {"app/greet.py": "def greet(name):\n    return f'hello {name}'\n"}),
    }
    for key in ("gone", "kept"):
        ingest(str(sources_[key]), name=names[key], embedder=hashing)
    eval_tree = tree(
        get_settings().eval_dir(names["gone"]) / "docstrings-tree",
        {"pay/bonus.py": "def compute_bonus(s):\n    pass\n"},
    )
    names["eval"] = f"{names['gone']}~eval-docstrings"
    ingest(str(eval_tree), name=names["eval"], embedder=hashing, derived_from=names["gone"])
    parent = repo_id(engine, names["gone"])
    access.grant(names["user"], names["gone"])
    access.grant(names["user"], names["kept"])
    run = add_run(engine, parent, fresh=False)
    home = get_settings().home
    made = {
        "checkout": tree(get_settings().checkouts_dir / sources.checkout_key(parent), {"pay/bonus.py": "copy"}),
        "retro": tree(get_settings().retro_dir(names["gone"]), {"tokenizer-1/vocab.json": "{}"}),
        "run": tree(get_settings().runs_dir / str(run), {"model.safetensors": "weights"}),
        "legacy_eval": tree(home / "eval" / names["gone"], {"docstrings-tree/pay/bonus.py": "old copy"}),
    }
    yield {**names, **{f"src_{k}": v for k, v in sources_.items()}, "dirs": made, "parent": parent, "run": run}
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM grants WHERE principal = :p"), {"p": f"user:{names['user']}"})


def test_delete_removes_every_row_and_directory_of_the_repository_and_nothing_else(engine, two):
    kept_before = visible_vectors(engine, two["kept"])
    gone_id, eval_id = two["parent"], repo_id(engine, two["eval"])
    assert all(rows_of(engine, gone_id)[t] for t in ("files", "chunks", "embeddings", "bm25_postings", "grants"))

    report = remove_repo(two["gone"])

    assert report.removed == (two["gone"], two["eval"]) and report.chunks == 1 and report.training_runs == 1
    for rid in (gone_id, eval_id):
        assert set(rows_of(engine, rid).values()) == {0}, rows_of(engine, rid)
    for name in (two["gone"], two["eval"]):
        with pytest.raises(RepoNotFound), engine.connect() as conn:
            store.repo_id(conn, name)
    assert access.allowed_repos(two["user"]) == [two["kept"]]
    assert not any(d.exists() for d in two["dirs"].values()), {k: d.exists() for k, d in two["dirs"].items()}
    assert not get_settings().eval_dir(two["gone"]).exists()
    assert sorted(report.deleted) == sorted([*two["dirs"].values(), get_settings().eval_dir(two["gone"])])
    # The other repository and the directories the repositories were read from are untouched.
    assert visible_vectors(engine, two["kept"]) == kept_before
    assert (two["src_gone"] / "pay" / "bonus.py").is_file() and (two["src_kept"] / "app" / "greet.py").is_file()


def test_a_dry_run_changes_nothing(engine, two):
    before = rows_of(engine, two["parent"])
    report = remove_repo(two["gone"], dry_run=True)
    assert report.dry_run and report.removed == (two["gone"], two["eval"]) and len(report.deleted) == 5
    assert rows_of(engine, two["parent"]) == before
    assert all(d.exists() for d in two["dirs"].values())


def test_a_directory_another_repository_uses_is_kept(engine, two):
    """A checkpoint of the deleted repository's run that another repository's index version was built with, and
    a directory another repository is read from."""
    encoder = f"realm:{two['dirs']['run'].resolve()}#document"
    with engine.begin() as conn:
        kept = store.repo_id(conn, two["kept"])
        conn.execute(sa.text("UPDATE index_versions SET encoder = :e WHERE repo_id = :r"), {"e": encoder, "r": kept})
        # acme_api's eval tree of old lay in the directory that acme/api's legacy name also gives.
        legacy_tree = str(two["dirs"]["legacy_eval"] / "docstrings-tree")
        conn.execute(sa.text("UPDATE repositories SET source = :s WHERE id = :r"), {"s": legacy_tree, "r": kept})
    report = remove_repo(two["gone"])
    assert set(report.kept) == {two["dirs"]["legacy_eval"], two["dirs"]["run"]}
    assert two["dirs"]["run"].is_dir() and two["dirs"]["legacy_eval"].is_dir()
    assert not two["dirs"]["checkout"].exists()


def test_a_directory_a_source_lies_in_or_that_holds_the_own_source_is_kept(engine, two, hashing):
    """A repository read from GROUNDING_HOME/retro (the deleted one's RETRO directory lies in it), and the deleted
    repository's own source inside one of its directories: neither is grounding's to delete."""
    home = get_settings().home
    with engine.begin() as conn:
        kept = store.repo_id(conn, two["kept"])
        conn.execute(
            sa.text("UPDATE repositories SET source = :s WHERE id = :r"), {"s": str(home / "retro"), "r": kept}
        )
        own = str(two["dirs"]["checkout"] / "pay")
        conn.execute(sa.text("UPDATE repositories SET source = :s WHERE id = :r"), {"s": own, "r": two["parent"]})
    report = remove_repo(two["gone"])
    assert set(report.kept) == {two["dirs"]["retro"], two["dirs"]["checkout"]}
    assert two["dirs"]["retro"].is_dir() and (two["dirs"]["checkout"] / "pay" / "bonus.py").is_file()


def test_an_old_directory_name_another_repository_shares_is_left(engine, two):
    """Before names were hashed, `OWNER/api` and `OWNER_api` had one eval directory: deleting one spares it."""
    owner = two["gone"].rsplit("-", 1)[0]
    slash, underscore = f"{owner}/api", f"{owner}_api"
    with engine.begin() as conn:
        store.upsert_repo(conn, slash, source="/nowhere", ref=None)
        store.upsert_repo(conn, underscore, source="/nowhere-else", ref=None)
    shared = tree(get_settings().home / "eval" / underscore, {"docstrings.jsonl": "{}"})
    assert remove_repo(slash).deleted == ()
    assert (shared / "docstrings.jsonl").is_file()
    assert remove_repo(underscore).deleted == (shared,) and not shared.exists()


def test_the_vector_indexes_of_its_versions_are_dropped(engine, two):
    with engine.connect() as conn:
        versions = (
            conn.execute(
                sa.text("SELECT id FROM index_versions WHERE repo_id = ANY(:ids)"),
                {"ids": [two["parent"], repo_id(engine, two["eval"])]},
            )
            .scalars()
            .all()
        )
    names = [f"embeddings_hnsw_v{v}" for v in versions]

    def present() -> list[str]:
        with engine.connect() as conn:
            return (
                conn.execute(sa.text("SELECT indexname FROM pg_indexes WHERE indexname = ANY(:n)"), {"n": names})
                .scalars()
                .all()
            )

    assert len(present()) == len(versions) == 2
    remove_repo(two["gone"])
    assert present() == []


def test_a_link_out_of_grounding_home_is_not_followed(engine, two, tmp_path):
    outside = tree(tmp_path / "outside", {"precious.txt": "not grounding's"})
    two["dirs"]["legacy_eval"].rename(tmp_path / "moved")
    two["dirs"]["legacy_eval"].symlink_to(outside, target_is_directory=True)
    assert two["dirs"]["legacy_eval"] in remove_repo(two["gone"], dry_run=True).kept
    report = remove_repo(two["gone"])
    assert (outside / "precious.txt").is_file() and two["dirs"]["legacy_eval"] in report.kept


def test_a_name_whose_legacy_directory_is_another_repositorys_directory_of_today_spares_it(engine, two):
    """`NAME-<16 hex>` read with the old naming is the directory validation.directory_name gives NAME now."""
    from grounding.validation import directory_name

    lookalike = directory_name(two["kept"])
    with engine.begin() as conn:
        store.upsert_repo(conn, lookalike, source="/nowhere", ref=None)
    datasets = tree(get_settings().eval_dir(two["kept"]), {"docstrings.jsonl": "{}"})
    assert datasets.name == lookalike
    assert remove_repo(lookalike).removed == (lookalike,)
    assert (datasets / "docstrings.jsonl").is_file()


def test_a_live_training_run_or_a_held_lock_refuses_and_deletes_nothing(engine, two):
    before = rows_of(engine, two["parent"])
    live = add_run(engine, two["parent"], fresh=True)
    with pytest.raises(IngestBusy, match=f"training run {live} "):
        remove_repo(two["gone"])
    with engine.begin() as conn:
        store.update_training_run(conn, live, status="complete", finished=True)
    with lock_held_elsewhere(two["gone"]), pytest.raises(IngestBusy, match="is being ingested"):
        remove_repo(two["gone"], wait=False)
    after = rows_of(engine, two["parent"])
    assert after == {**before, "training_runs": before["training_runs"] + 1}
    assert all(d.exists() for d in two["dirs"].values())


def test_the_cli_asks_for_yes_then_deletes(engine, two, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # not a terminal: nobody to ask
    assert main(["delete", two["gone"]]) == 1
    err = capsys.readouterr().err
    assert "pass --yes" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["delete", two["gone"], "--dry-run"]) == 0
    assert "would delete" in capsys.readouterr().out and repo_id(engine, two["gone"])
    assert main(["delete", two["gone"], "--yes"]) == 0
    assert capsys.readouterr().out.startswith(f"deleted {two['gone']}: 1 files, 1 chunks, 1 eval indexes")
    assert main(["delete", two["gone"], "--yes"]) == 1
    assert f"repository {two['gone']!r} is not ingested" in capsys.readouterr().err
    assert main(["delete", "../etc", "--yes"]) == 1
    assert "not a valid repository name" in capsys.readouterr().err


def test_the_api_deletes_for_an_admin_only(engine, two):
    from grounding.service.api import create_app

    tag = uuid.uuid4().hex[:6]
    user, admin = tokens.create(two["user"]), tokens.create(f"root-{tag}", admin=True)
    try:
        with running(create_app(rate_limit=0)) as url:
            as_user = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {user.secret}"}, timeout=30)
            as_admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin.secret}"}, timeout=30)
            with lock_held_elsewhere(two["gone"]):
                busy = as_admin.delete(f"/v1/repos/{two['gone']}")
            assert busy.status_code == 409 and "IngestBusy" in busy.json()["type"], busy.text
            refused = as_user.delete(f"/v1/repos/{two['gone']}")
            assert refused.status_code == 403, refused.text
            assert httpx.delete(f"{url}/v1/repos/{two['gone']}").status_code == 401
            assert repo_id(engine, two["gone"])
            # A revoke is still a revoke: DELETE .../grants/PRINCIPAL is not a deletion of "NAME/grants/...".
            revoked = as_admin.delete(f"/v1/repos/{two['kept']}/grants/user:{two['user']}")
            assert revoked.status_code == 200 and repo_id(engine, two["kept"])
            done = as_admin.delete(f"/v1/repos/{two['gone']}")
            assert done.status_code == 200, done.text
            body = done.json()
            assert body["removed"] == [two["gone"], two["eval"]] and body["directories_deleted"] == 5
            assert str(get_settings().home) not in done.text  # no server path
            assert as_admin.delete(f"/v1/repos/{two['gone']}").status_code == 404
            assert as_user.get(f"/v1/repos/{two['kept']}").status_code == 404  # the revoke above took
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM api_tokens WHERE id IN (:a, :b)"), {"a": user.id, "b": admin.id})


def test_an_eval_build_that_harvested_before_the_delete_writes_no_copy_after_it(
    engine, repo_name, hashing, tmp_path, monkeypatch
):
    from grounding.evaluation import eval_index
    from tests.conftest import git_repo

    name = f"{repo_name}-documented"
    files = {"crown.py": 'def crown_pricing(order):\n    """Compute the confidential discount."""\n    return 0.0317\n'}
    ingest(str(git_repo(tree(tmp_path / "documented", files))), name=name, embedder=hashing)
    real_harvest = eval_index._harvest

    def harvest_then_delete(repo, harvester):
        found = real_harvest(repo, harvester)
        remove_repo(repo)  # another process's `grounding delete`, between the harvest and the tree
        return found

    monkeypatch.setattr(eval_index, "_harvest", harvest_then_delete)
    with pytest.raises(RepoNotFound):
        eval_index.build_eval_index(name)
    assert not get_settings().eval_dir(name).exists()


def test_leftovers_of_a_delete_cut_off_after_its_commit_are_swept_and_nothing_of_a_live_repository(
    engine, two, monkeypatch, capsys
):
    import grounding.index.remove as remove

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies between the database commit and the file deletion

    with monkeypatch.context() as patch:
        patch.setattr(remove, "_delete", killed)
        with pytest.raises(KeyboardInterrupt):
            remove_repo(two["gone"])
    with pytest.raises(RepoNotFound), engine.connect() as conn:
        store.repo_id(conn, two["gone"])
    left = [*two["dirs"].values(), get_settings().eval_dir(two["gone"])]
    assert all(d.is_dir() for d in left)
    home = get_settings().home
    live = [
        tree(get_settings().eval_dir(two["kept"]), {"docstrings.jsonl": "{}"}),
        tree(get_settings().checkouts_dir / sources.checkout_key(repo_id(engine, two["kept"])), {"a.py": ""}),
    ]
    fresh = tree(home / "runs" / "999999", {"partial.bin": "a run that is just starting"})
    an_hour_ago = time.time() - 3600
    for d in left + live:
        os.utime(d, (an_hour_ago, an_hour_ago))

    assert sorted(remove.sweep_leftovers(dry_run=True)[0]) == sorted(left)  # a dry run deletes nothing
    assert all(d.is_dir() for d in left)
    assert main(["delete", "--leftovers"]) == 0
    assert f"would delete {len(left)} directories" in capsys.readouterr().out and all(d.is_dir() for d in left)
    assert main(["delete", "--leftovers", "--yes"]) == 0
    assert capsys.readouterr().out.startswith(f"deleted {len(left)} directories that belong to no repository")
    assert not any(d.exists() for d in left) and all(d.is_dir() for d in live)
    assert fresh.is_dir(), "too young to be a leftover: its run may not have committed its row yet"
    assert visible_vectors(engine, two["kept"]) and (two["src_gone"] / "pay" / "bonus.py").is_file()
    assert main(["delete", "--leftovers", two["kept"]]) == 1
    assert "or give --leftovers" in capsys.readouterr().err


def test_a_refresh_planned_before_the_delete_does_not_register_the_repository_again(engine, two, monkeypatch):
    from grounding.index import refresh as refreshing

    real_plan = refreshing.plan_refresh

    def plan_then_delete(repo):
        planned = real_plan(repo)
        remove_repo(repo)  # deleted between the refresh's plan and its ingest
        return planned

    monkeypatch.setattr(refreshing, "plan_refresh", plan_then_delete)
    outcome = refreshing.refresh(two["gone"])  # not a failure: the nightly refresh stays green
    assert outcome.action == "deleted" and outcome.report is None
    with pytest.raises(RepoNotFound), engine.connect() as conn:
        store.repo_id(conn, two["gone"])


def test_the_sweep_spares_configured_models_and_live_repositories_old_directories_and_odd_names_do_not_crash_it(
    engine, two, monkeypatch
):
    from grounding.config import reset_settings
    from grounding.index.remove import sweep_leftovers

    home = get_settings().home
    reranker = tree(home / "runs" / "my-reranker", {"model.safetensors": "weights"})
    live_legacy = tree(home / "eval" / two["kept"], {"mine.jsonl": "{}"})  # a live repository's, named the old way
    odd = tree(home / "runs" / "²", {"x": ""})
    monkeypatch.setenv("GROUNDING_RERANKER", str(reranker))
    reset_settings()
    for d in (reranker, live_legacy, odd):
        os.utime(d, (time.time() - 3600,) * 2)
    deleted, kept = sweep_leftovers()
    assert odd in deleted and reranker in kept
    assert (reranker / "model.safetensors").is_file() and (live_legacy / "mine.jsonl").is_file()


def test_a_home_another_database_also_uses_is_not_swept_and_a_delete_keeps_its_id_named_directories(engine, two):
    from grounding.errors import SourceConflict
    from grounding.index import home as homes
    from grounding.index.remove import sweep_leftovers

    stamp = get_settings().home / homes.STAMP
    with engine.connect() as conn:
        assert stamp.read_text().split() == [store.database_identity(conn)], "the ingests recorded it"
    orphan = tree(get_settings().checkouts_dir / "repo-987654", {"theirs.py": "another deployment's clone"})
    os.utime(orphan, (time.time() - 3600,) * 2)
    with stamp.open("a") as out:
        out.write("7012345678901234567/other\n")  # a deployment with its own database ingested into this home
    with pytest.raises(SourceConflict, match="is not this database's alone"):
        sweep_leftovers()
    report = remove_repo(two["gone"])
    assert {two["dirs"]["checkout"], two["dirs"]["run"]} <= set(report.kept), "repo-ID and runs/ID may be theirs"
    assert two["dirs"]["checkout"].is_dir() and orphan.is_dir()
    assert not get_settings().eval_dir(two["gone"]).exists(), "a hashed name is this repository's wherever it is"


def test_a_delete_is_recorded_by_a_hash_of_its_name_past_the_mark_an_earlier_ingest_saw(engine, two):
    with engine.connect() as conn:
        before = store.deletion_mark(conn)
    remove_repo(two["gone"])
    with engine.connect() as conn:
        after = store.deletion_mark(conn)
        assert store.deleted_since(conn, two["gone"], before), "deleted after the mark: an ingest queued then stops"
        assert store.deleted_since(conn, f"{two['gone']}~eval-docstrings", before), "its eval index too"
        assert not store.deleted_since(conn, two["gone"], after), "queued after the delete: a new registration"
        assert not store.deleted_since(conn, two["kept"], before)
        stored = conn.execute(sa.text("SELECT name_sha256 FROM repo_deletions WHERE id > :m"), {"m": before})
        assert two["gone"] not in str(stored.scalars().all()), "the name itself is not kept"


def test_migration_0015_adds_and_drops_the_deletes_record(engine):
    from tests.conftest import assert_migration_adds

    assert_migration_adds(engine, "repo_deletions", previous="0014")
