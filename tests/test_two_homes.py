"""Workers that share the database but not a disk: each GROUNDING_HOME is its own scratch (a pod's emptyDir).

One home ingests a git URL; another, which never saw it, runs what the `gpu` pool runs (the RETRO database
build of train-retro, a completion's prefix) and must read the tree at the snapshot's commit, not the
branch's newer head, whether it has no clone at all or a clone another snapshot left behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from grounding.config import reset_settings
from grounding.index.embed import HashingEmbedder
from tests.conftest import git, git_repo, write_tree

OLD = 'def rounded(x):\n    """Round an invoice total to cents."""\n    return round(x, 2)\n'
NEW = 'def rounded(x):\n    """Round an invoice total up."""\n    return -(-x // 1)\n'


def use_home(monkeypatch, home) -> None:
    monkeypatch.setenv("GROUNDING_HOME", str(home))
    reset_settings()


@pytest.fixture
def upstream(engine, repo_name, tmp_path, monkeypatch):
    """(url, work tree, indexed commit): a bare origin ingested from home A, then moved on upstream."""
    from grounding.index.ingest import ingest

    files = {f"billing/part{i}.py": f"def part{i}(total):\n    return total * {i} + {i}\n" * 12 for i in range(8)}
    work = git_repo(write_tree(tmp_path / "work", {"billing/money.py": OLD, **files}))
    bare = tmp_path / "origin.git"
    git(tmp_path, "clone", "--quiet", "--bare", str(work), str(bare))
    git(work, "remote", "add", "origin", str(bare))
    use_home(monkeypatch, tmp_path / "home-a")
    report = ingest(bare.as_uri(), name=repo_name, embedder=HashingEmbedder(64))
    (work / "billing/money.py").write_text(NEW)
    git(work, "commit", "-qam", "round up")
    git(work, "push", "--quiet", "origin", "HEAD")
    return bare.as_uri(), work, report.commit


def test_a_worker_with_an_empty_home_trains_on_the_indexed_commit(upstream, repo_name, tmp_path, monkeypatch):
    """train-retro as the `gpu` pool runs it, in a home that never saw the repository."""
    from grounding.index.retro_db import RetroDbConfig, latest_database, repository_texts
    from grounding.training.retro_train import RetroTrainConfig, tiny_model, train_retro

    url, work, indexed = upstream
    home_b = tmp_path / "home-b"
    use_home(monkeypatch, home_b)
    assert not (home_b / "checkouts").exists(), "this worker never saw the repository"
    report = train_retro(
        repo_name,
        model=tiny_model(1, 0, d_model=32, n_layers=2, n_heads=2, max_seq_len=128, cca_start=2, enc_layers=1),
        train_config=RetroTrainConfig(
            steps=2, batch_size=2, chunks_per_sequence=2, warmup=1, log_every=1, vocab_size=300, baseline=False
        ),
        db_config=RetroDbConfig(chunk_tokens=16, neighbours=1, encoder="hashing-64"),
        device="cpu",
    )
    assert Path(report.checkpoint).resolve().is_relative_to(home_b.resolve()), "checkpoints go to the home (shared)"
    database = latest_database(repo_name)
    assert database.commit == indexed != git(work, "rev-parse", "HEAD")
    assert dict(repository_texts(repo_name))["billing/money.py"] == OLD, "the snapshot's file, not upstream's"
    (clone,) = (home_b / "checkouts").iterdir()
    assert git(clone, "rev-parse", "HEAD") == indexed


def test_a_clone_another_snapshot_left_is_moved_to_the_indexed_commit(upstream, repo_name, tmp_path, monkeypatch):
    from grounding.answer.completion import prefix_at
    from grounding.index.retro_db import repository_texts

    url, work, indexed = upstream
    use_home(monkeypatch, tmp_path / "home-c")
    assert prefix_at(repo_name, "billing/money.py", 2) == OLD.split("\n", 2)[0] + "\n" + OLD.split("\n")[1] + "\n", (
        "a completion's prefix clones into an empty home at the indexed commit"
    )
    (clone,) = (tmp_path / "home-c" / "checkouts").iterdir()
    git(clone, "fetch", "--quiet", "origin")
    git(clone, "checkout", "--quiet", "--detach", git(work, "rev-parse", "HEAD"))  # as a later snapshot would
    assert dict(repository_texts(repo_name))["billing/money.py"] == OLD
    assert git(clone, "rev-parse", "HEAD") == indexed


def test_shards_arriving_together_at_a_home_without_the_clone_clone_it_once(upstream, repo_name, tmp_path, monkeypatch):
    """The shards of one ingest on one worker host whose home never saw the repository: one clones, the others wait."""
    import threading

    from grounding.index.ingest import ingest
    from grounding.index.shards import run_shard

    url, work, _ = upstream
    use_home(monkeypatch, tmp_path / "home-b")
    errors: list[BaseException] = []

    def side_by_side_elsewhere(shards):
        use_home(monkeypatch, tmp_path / "home-shards")  # the shard worker's own scratch home

        def run(shard):
            try:
                run_shard(shard.repo, shard.snapshot, shard.index)
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

        threads = [threading.Thread(target=run, args=(s,)) for s in shards]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        use_home(monkeypatch, tmp_path / "home-b")

    name = f"{repo_name}-sharded"  # a new repository: all nine files to write, four shards
    report = ingest(url, name=name, embedder=HashingEmbedder(64), shards=4, run_shards=side_by_side_elsewhere)
    assert not errors, errors
    assert report.files_changed == 9
    (clone,) = (tmp_path / "home-shards" / "checkouts").iterdir()
    assert git(clone, "rev-parse", "HEAD") == report.commit == git(work, "rev-parse", "HEAD")
