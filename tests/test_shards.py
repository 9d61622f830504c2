"""A sharded ingest on the real Postgres: the result of one ingest; shards retried; stale or moved ones refused."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from grounding import store
from grounding.config import reset_settings
from grounding.errors import IngestError, InvalidArgument
from grounding.index import shards as shards_module
from grounding.index import sources
from grounding.index.ingest import ingest
from grounding.index.shards import plan_shards, run_shard
from grounding.records import SourceFile
from tests.conftest import copy_tree, visible_vectors, write_tree


def file_rows(engine, name: str) -> tuple[int, int]:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT count(*), count(DISTINCT path) FROM files f JOIN repositories r ON r.id = f.repo_id "
                "WHERE r.name = :n"
            ),
            {"n": name},
        ).one()


def test_a_sharded_ingest_writes_what_one_ingest_writes_and_reports_the_same(engine, repo_name, hashing, tmp_path):
    src = copy_tree("click", tmp_path / "click")
    whole = ingest(str(src), name=f"{repo_name}-whole", embedder=hashing)
    ran: list[int] = []

    def runner(shards):
        paths = [p for s in shards for p, _ in s.files]
        assert len(shards) == 3 and len(paths) == len(set(paths)), "each file in one shard"
        for shard in reversed(shards):  # any order
            ran.append(shard.index)
            run_shard(shard.repo, shard.snapshot, shard.index)

    sharded = ingest(str(src), name=repo_name, embedder=hashing, shards=3, run_shards=runner)
    assert ran == [2, 1, 0]
    assert visible_vectors(engine, repo_name) == visible_vectors(engine, f"{repo_name}-whole")
    for field in ("files_changed", "chunks_added", "embeddings_computed", "chunks_removed"):
        assert getattr(sharded, field) == getattr(whole, field), field
    assert sharded.seconds["embed"] > 0 and sharded.seconds["write"] > 0
    rows, paths = file_rows(engine, repo_name)
    assert rows == paths == whole.files_changed
    with engine.connect() as conn:
        by_shard = store.shard_batches(conn, sharded.snapshot_id)
        stats = store.snapshot(conn, sharded.snapshot_id)["stats"]["shards"]
    assert sorted(by_shard) == [0, 1, 2]
    assert sum(b["chunks_added"] for batches in by_shard.values() for b in batches) == whole.chunks_added
    assert sum(s["files"] for s in stats.values()) == whole.files_changed

    # Incremental as ever: nothing changed, nothing written; one file changed, one shard's worth.
    again = ingest(str(src), name=repo_name, shards=3, run_shards=runner)
    assert again.files_changed == 0 and again.chunks_added == 0
    (src / "core.py").write_text((src / "core.py").read_text() + "\ndef sharded_marker():\n    pass\n")
    moved = ingest(str(src), name=repo_name, shards=3)  # the default runner: each shard in turn, here
    assert moved.files_changed == 1
    assert any(row[0] == "core.py" for row in visible_vectors(engine, repo_name))


def test_a_shard_run_again_after_its_worker_died_reuses_what_it_wrote_and_duplicates_nothing(
    engine, repo_name, hashing, tmp_path, monkeypatch
):
    src = copy_tree("click", tmp_path / "click")
    monkeypatch.setenv("GROUNDING_WRITE_BATCH_FILES", "2")
    reset_settings()
    real = shards_module.write_batches
    died = []

    def dies_after_first_batch(*args, **kwargs):
        def after(b):
            if b == 0 and not died:
                died.append(True)
                raise KeyboardInterrupt  # as a killed process: no cleanup of what it wrote

        return real(*args, **kwargs, after_batch=after)

    resumed = []

    def runner(shards):
        monkeypatch.setattr(shards_module, "write_batches", dies_after_first_batch)
        with pytest.raises(KeyboardInterrupt):
            run_shard(shards[0].repo, shards[0].snapshot, 0)
        monkeypatch.setattr(shards_module, "write_batches", real)
        for shard in shards:  # shard 0 again, "elsewhere"; the others once
            resumed.append(run_shard(shard.repo, shard.snapshot, shard.index).files_resumed)

    report = ingest(str(src), name=repo_name, embedder=hashing, shards=2, run_shards=runner)
    assert resumed == [2, 0], "the second run of shard 0 kept the two files its dead run wrote"
    whole = ingest(str(src), name=f"{repo_name}-whole", embedder=hashing)
    assert visible_vectors(engine, repo_name) == visible_vectors(engine, f"{repo_name}-whole")
    assert report.chunks_added == whole.chunks_added
    rows, paths = file_rows(engine, repo_name)
    assert rows == paths, "no file row twice"


def test_what_a_dead_run_of_a_shard_wrote_is_counted_in_the_report(engine, repo_name, hashing, tmp_path, monkeypatch):
    """Its redacted secrets and computed vectors too: a batch's counts are committed with its rows."""
    files = {f"m{i}.py": f"def f{i}():\n    return {i} * {i}\n" for i in range(4)}
    files["m0.py"] = "KEY = 'AKIAABCDEFGHIJKLMNOP'\n\n\ndef f0():\n    return KEY\n"
    src = write_tree(tmp_path / "src", files)
    monkeypatch.setenv("GROUNDING_WRITE_BATCH_FILES", "1")
    reset_settings()
    real = shards_module.write_batches

    def dies_after_first_batch(*args, **kwargs):
        def after(b):
            raise KeyboardInterrupt  # as a killed process

        return real(*args, **kwargs, after_batch=after)

    def runner(shards):
        first = next(s for s in shards if s.files[0][0] == "m0.py")
        monkeypatch.setattr(shards_module, "write_batches", dies_after_first_batch)
        with pytest.raises(KeyboardInterrupt):
            run(first)
        monkeypatch.setattr(shards_module, "write_batches", real)
        for shard in shards:
            run(shard)

    sharded = ingest(str(src), name=repo_name, embedder=hashing, shards=2, run_shards=runner)
    whole = ingest(str(src), name=f"{repo_name}-whole", embedder=hashing)
    for field in ("chunks_added", "embeddings_computed", "secrets_redacted"):
        assert getattr(sharded, field) == getattr(whole, field) >= 1, field
    with engine.connect() as conn:
        assert store.snapshot(conn, sharded.snapshot_id)["stats"]["redacted_files"] == ["m0.py"]
    assert "m0.py" not in repr(shards_module.ShardStats(redacted={"m0.py": 1}).summary()), "a flow's result: counts"


def test_a_shard_of_a_finished_snapshot_writes_nothing(engine, repo_name, hashing, tmp_path):
    src = copy_tree("click", tmp_path / "click")
    kept = []
    report = ingest(
        str(src),
        name=repo_name,
        embedder=hashing,
        shards=2,
        run_shards=lambda shards: [kept.extend(shards), *map(run, shards)],
    )
    before = visible_vectors(engine, repo_name)
    (src / "core.py").write_text("def rewritten():\n    pass\n")
    stale = next(s for s in kept if any(p == "core.py" for p, _ in s.files))
    with pytest.raises(IngestError, match="not running"):
        run(stale)  # a worker that outlived its ingest (the ingest saw it as crashed)
    assert visible_vectors(engine, repo_name) == before and report.snapshot_id == stale.snapshot


def run(shard):
    return run_shard(shard.repo, shard.snapshot, shard.index)


def test_a_shard_whose_file_moved_on_disk_fails_the_ingest_and_the_previous_snapshot_answers(
    engine, repo_name, hashing, tmp_path
):
    src = copy_tree("click", tmp_path / "click")
    ingest(str(src), name=repo_name, embedder=hashing)
    before = visible_vectors(engine, repo_name)
    (src / "core.py").write_text((src / "core.py").read_text() + "\n# changed\n")

    def changes_under_it(shards):
        (src / "core.py").write_text("# changed again while the shards ran\n")
        for shard in shards:
            run(shard)

    with pytest.raises(IngestError, match="not on this worker as the ingest listed it"):
        ingest(str(src), name=repo_name, shards=2, run_shards=changes_under_it)
    assert visible_vectors(engine, repo_name) == before


def test_shards_are_checked(engine, repo_name, hashing, tmp_path):
    src = copy_tree("click", tmp_path / "click")
    kept = []
    ingest(
        str(src),
        name=repo_name,
        embedder=hashing,
        shards=2,
        run_shards=lambda shards: [kept.extend(shards), *map(run, shards)],
    )
    other = copy_tree("click", tmp_path / "other")
    ingest(str(other), name=f"{repo_name}-other", embedder=hashing)
    shard = kept[0]
    with pytest.raises(InvalidArgument, match="has no shard 0"):  # another repository's snapshot
        run_shard(f"{repo_name}-other", shard.snapshot, 0)
    with pytest.raises(InvalidArgument, match="has no shard 7"):
        run_shard(repo_name, shard.snapshot, 7)
    for bad in (0, 257, True, "2"):
        with pytest.raises(InvalidArgument, match="shards must be"):
            ingest(str(src), name=repo_name, shards=bad)
    with pytest.raises(InvalidArgument, match="snapshot must be"):
        run_shard(repo_name, -1, 0)
    with pytest.raises(InvalidArgument, match="index must be"):
        run_shard(repo_name, shard.snapshot, True)
    assert set(shard.parameters()) == {"repo", "snapshot", "index"}, "no path or hash travels to a worker"


def test_a_shard_a_killed_ingest_left_never_moves_the_checkout_under_the_next_ingest(
    engine, repo_name, hashing, tmp_path, monkeypatch
):
    """The next ingest of the repository waits for a dead run's shard that is opening the checkout before it lists
    the tree itself, and a shard of that run arriving later is refused before it touches the checkout."""
    src = copy_tree("click", tmp_path / "click")
    kept = []

    def killed(shards):
        kept.extend(shards)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest(str(src), name=repo_name, embedder=hashing, shards=2, run_shards=killed)
    with engine.begin() as conn:  # as a killed process leaves it: the snapshot still says running
        conn.execute(sa.text("UPDATE snapshots SET status = 'running' WHERE id = :s"), {"s": kept[0].snapshot})
    opening, opened, listed = threading.Event(), threading.Event(), []
    real_reopen, real_list = sources.reopen, sources.list_files

    def slow_reopen(*args, **kwargs):
        opening.set()
        assert opened.wait(30)
        return real_reopen(*args, **kwargs)

    def list_files(*args, **kwargs):
        listed.append(opened.is_set())
        return real_list(*args, **kwargs)

    monkeypatch.setattr(sources, "reopen", slow_reopen)
    monkeypatch.setattr(sources, "list_files", list_files)
    refused: list[BaseException] = []

    def run_orphan():
        try:
            run(kept[0])
        except IngestError as err:  # the next ingest failed its snapshot while it chunked: it writes nothing
            refused.append(err)

    orphan = threading.Thread(target=run_orphan, daemon=True)
    orphan.start()
    assert opening.wait(30)
    done: list = []
    follower = threading.Thread(target=lambda: done.append(ingest(str(src), name=repo_name, embedder=hashing)))
    follower.start()
    time.sleep(1.5)
    assert not listed, "the next ingest listed the tree while a dead run's shard could still move it"
    opened.set()
    follower.join(60)
    orphan.join(60)
    assert listed == [True] and done and done[0].snapshot_id != kept[0].snapshot
    assert not orphan.is_alive() and len(refused) == 1, "the dead run's shard wrote into a snapshot that had ended"
    monkeypatch.setattr(sources, "reopen", lambda *a, **k: pytest.fail("a refused shard opened the checkout"))
    with pytest.raises(IngestError, match="not running"):
        run(kept[1])


def test_the_next_ingest_waits_for_a_dead_runs_shard_only_so_long(engine, repo_name, hashing, tmp_path):
    from grounding.errors import IngestBusy

    report = ingest(str(copy_tree("click", tmp_path / "click")), name=repo_name, embedder=hashing)
    with engine.connect() as holder, engine.connect() as conn:
        repo = store.repo_id(holder, repo_name)
        holder.execute(sa.text("UPDATE snapshots SET status = 'running' WHERE id = :s"), {"s": report.snapshot_id})
        holder.commit()
        with holder.begin():
            assert store.hold_running_snapshot(holder, repo, report.snapshot_id)  # a shard inside its reopen
            t = time.perf_counter()
            with pytest.raises(IngestBusy, match="still opening its checkout"), conn.begin():
                store.fail_interrupted(conn, repo, wait_s=0.5)
            assert time.perf_counter() - t < 5
        with conn.begin():
            store.fail_interrupted(conn, repo, wait_s=0.5)  # once it let go
            assert store.snapshot(conn, report.snapshot_id)["status"] == "failed"


def test_two_runs_of_one_shard_at_once_write_each_file_once(engine, repo_name, hashing, tmp_path, monkeypatch):
    """A run of a shard that Prefect saw crash but that still lives, inside a write, while the shard runs again:
    the second run waits for the first's write, leaves out what it wrote, and the ingest shows each file once."""
    src = copy_tree("click", tmp_path / "click")
    ingest(str(src), name=repo_name, embedder=hashing)
    for f in ("core.py", "types.py", "utils.py"):
        (src / f).write_text((src / f).read_text() + "\n# changed\n")
    real = store.write_files
    main = threading.current_thread()
    inside = threading.Event()
    late: list[BaseException] = []

    def slow_write(*args, **kwargs):
        out = real(*args, **kwargs)
        if threading.current_thread() is not main:
            inside.set()
            time.sleep(2)  # its rows written, not yet committed, while the ingest finishes
        return out

    monkeypatch.setattr(store, "write_files", slow_write)

    def runner(shards):
        def zombie():  # shard 0's first run, which Prefect saw crash: it lives on, inside its write
            try:
                run(shards[0])
            except Exception as err:  # noqa: BLE001 - asserted below
                late.append(err)

        runner.thread = threading.Thread(target=zombie)
        runner.thread.start()
        assert inside.wait(30)
        for shard in shards:  # shard 0 started again, and shard 1: both done, so the ingest finishes
            run(shard)

    try:
        report = ingest(str(src), name=repo_name, embedder=hashing, shards=2, run_shards=runner)
    finally:
        runner.thread.join()
    rows, paths = file_rows(engine, repo_name)
    assert rows == paths, "the late run's rows were dropped: no file twice"
    assert report.files_changed == 3 and not late
    assert report.embeddings_computed + report.embeddings_reused == report.chunks_added, "counted once, as written"
    ingest(str(src), name=f"{repo_name}-whole", embedder=hashing)
    assert visible_vectors(engine, repo_name) == visible_vectors(engine, f"{repo_name}-whole")


def test_shards_split_files_by_bytes_and_keep_listing_order():
    files = [SourceFile(f"f{i}.py", b"x" * size, "python") for i, size in enumerate([900, 100, 100, 500, 400, 1])]
    plan = plan_shards("r", 1, 1, files, count=2)
    loads = [sum(next(f.size for f in files if f.path == p) for p, _ in s.files) for s in plan]
    assert sorted(loads) == [1000, 1001]
    assert all([p for p, _ in s.files] == sorted(p for p, _ in s.files) for s in plan)
    assert len(plan_shards("r", 1, 1, files[:2], count=8)) == 2, "never an empty shard"


def test_migration_0014_adds_and_drops_the_shard_plans(engine):
    from tests.conftest import assert_migration_adds

    assert_migration_adds(engine, "ingest_shards", previous="0013")
