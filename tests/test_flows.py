"""The ingest-repo flow run by Prefect (a real flow run against a temporary Prefect server)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import copy_tree, visible_vectors


def test_ingest_repo_flow_writes_chunks_and_publishes_an_artifact(
    prefect_server, engine, repo_name, tmp_path, monkeypatch
):
    from prefect.client.orchestration import get_client

    from flows.ingest import ingest_repo

    monkeypatch.setenv("GROUNDING_ENCODER", "hashing-64")
    from grounding.config import reset_settings

    reset_settings()
    src = copy_tree("requests", tmp_path / "requests")
    (src / "logo.bin").write_bytes(b"\0\1\2")
    state = ingest_repo(str(src), name=repo_name, return_state=True)
    assert state.is_completed(), state
    summary = state.result()
    assert summary["repo"] == repo_name and summary["chunks_added"] > 100
    assert summary["skipped"]["binary"] >= 1
    with engine.connect() as conn:
        chunks = conn.execute(
            sa.text("SELECT count(*) FROM chunks c JOIN repositories r ON r.id = c.repo_id WHERE r.name = :n"),
            {"n": repo_name},
        ).scalar()
    assert chunks == summary["chunks_added"]

    import asyncio

    async def artifact():
        async with get_client() as client:
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ingest-" + repo_name.lower()]))
            )
            return found[0].data if found else None

    data = asyncio.run(artifact())
    assert data and "| added |" in data and "| binary |" in data and "| embed |" in data


@pytest.fixture
def ingested_once(prefect_server, engine, repo_name, tmp_path, monkeypatch):
    """requests' tree, and the summary of its one-task ingest as `<repo_name>-one` (hashing-64 vectors)."""
    from flows.ingest import ingest_repo
    from grounding.config import reset_settings

    monkeypatch.setenv("GROUNDING_ENCODER", "hashing-64")
    reset_settings()
    src = copy_tree("requests", tmp_path / "requests")
    return src, ingest_repo(str(src), name=f"{repo_name}-one", tune_fusion=False)


def test_ingest_repo_with_shards_runs_them_as_tasks_and_writes_what_one_task_writes(engine, repo_name, ingested_once):
    from flows.ingest import ingest_repo

    src, one = ingested_once
    state = ingest_repo(str(src), name=repo_name, tune_fusion=False, shards=3, return_state=True)
    assert state.is_completed(), state
    sharded = state.result()
    assert sharded["chunks_added"] == one["chunks_added"] > 100

    assert visible_vectors(engine, repo_name) == visible_vectors(engine, f"{repo_name}-one")

    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async def task_names() -> list[str]:  # of the ingest-shards sub-flow run
        async with get_client() as client:
            children = FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])
            )
            subflows = await client.read_flow_runs(flow_run_filter=children)
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id={"any_": [r.id for r in subflows]}),
            )
            return sorted(r.name.rsplit("-", 1)[0] for r in runs)

    assert asyncio.run(task_names()).count("ingest_shard_task") == 3, "one task per shard"
    with pytest.raises(Exception, match="shard_pool must be one of"):
        ingest_repo(str(src), name=repo_name, shards=2, shard_pool="tpu")


def test_ingest_repo_with_shards_on_a_local_dask_cluster_writes_what_one_task_writes(
    engine, repo_name, ingested_once, monkeypatch
):
    from distributed import LocalCluster

    from flows.ingest import ingest_repo, shard_task_runner
    from grounding.config import reset_settings
    from grounding.errors import InvalidArgument

    src, one = ingested_once
    # Worker processes of their own, started after the test's environment is set: they inherit its database.
    # They are spawned: a __main__ an earlier test left (a Streamlit page) must not be re-run in them.
    import sys
    import types

    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        monkeypatch.setenv("GROUNDING_SHARD_CLUSTER", cluster.scheduler_address)
        reset_settings()
        sharded = ingest_repo(str(src), name=repo_name, tune_fusion=False, shards=2)
        ran = {prefix for prefix in cluster.scheduler.task_prefixes}
        for cluster, message in (
            ("http://dask.example:8786", "must be a Dask scheduler"),
            ("tcp://10.1.2.3:8786", "plaintext to another host"),  # runs code for anyone who reaches it
            ("tcp://localhost:8786@evil.example", "not scheme://host"),
            ("ray://10.1.2.3:10001", "plaintext to another host"),  # Ray's client server has no authentication
        ):
            monkeypatch.setenv("GROUNDING_SHARD_CLUSTER", cluster)
            reset_settings()
            with pytest.raises(Exception, match=message):
                ingest_repo(str(src), name=repo_name, shards=2)
        monkeypatch.setenv("RAY_USE_TLS", "1")
        with pytest.raises(InvalidArgument, match="prefect-ray is not installed"):
            shard_task_runner("ray://10.1.2.3:10001")
    assert "ingest_shard_task" in ran, ran
    assert sharded["chunks_added"] == one["chunks_added"] > 100
    assert visible_vectors(engine, repo_name) == visible_vectors(engine, f"{repo_name}-one")


def test_flow_fails_without_retry_on_a_missing_path(prefect_server, engine, tmp_path):
    from flows.ingest import ingest_repo

    state = ingest_repo(str(tmp_path / "missing"), name="missing", return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="does not exist"):
        state.result()


def test_refresh_repos_flow_ingests_moved_repos_and_reports_each(prefect_server, engine, repo_name, hashing, tmp_path):
    from flows.refresh import refresh_repos
    from grounding.index.ingest import ingest
    from tests.conftest import git, git_repo

    moving = git_repo(copy_tree("requests", tmp_path / "moving"))
    still = git_repo(copy_tree("click", tmp_path / "still"))
    gone = copy_tree("requests", tmp_path / "gone")
    for name, src in ((f"{repo_name}-a", moving), (f"{repo_name}-b", still), (f"{repo_name}-c", gone)):
        ingest(f"file://{src}" if src != gone else str(src), name=name, embedder=hashing)
    (moving / "help.py").write_text((moving / "help.py").read_text() + "\ndef refreshed_marker():\n    pass\n")
    git(moving, "commit", "-qam", "move")
    shutil.rmtree(gone)

    state = refresh_repos([f"{repo_name}-a", f"{repo_name}-b", f"{repo_name}-c"], return_state=True)
    assert state.is_failed(), "one repository failed, so the run says so"
    with pytest.raises(RuntimeError, match="1 of 3 repositories failed"):
        state.result()
    with engine.connect() as conn:
        rows = dict(
            conn.execute(
                sa.text(
                    "SELECT r.name, count(s.id) FROM repositories r JOIN snapshots s ON s.repo_id = r.id "
                    "WHERE r.name LIKE :n GROUP BY r.name"
                ),
                {"n": repo_name + "-%"},
            ).all()
        )
    assert rows == {f"{repo_name}-a": 2, f"{repo_name}-b": 1, f"{repo_name}-c": 1}

    again = refresh_repos([f"{repo_name}-a", f"{repo_name}-b"])
    assert [r["action"] for r in again] == ["unchanged", "unchanged"]


def test_finetune_retriever_flow_trains_gates_and_publishes(prefect_server, engine, repo_name, tiny_encoder, tmp_path):
    from flows.finetune import finetune_retriever
    from grounding.index.embed import HFEncoder
    from grounding.index.ingest import ingest
    from grounding.training.runs import training_runs

    ingest(str(copy_tree("requests", tmp_path / "requests")), name=repo_name, embedder=HFEncoder(tiny_encoder))
    state = finetune_retriever(
        repo=repo_name,
        encoder=str(tiny_encoder),
        pretrain_steps=0,
        finetune_steps=4,
        batch_size=4,
        margin=10.0,
        device="cpu",
        return_state=True,
    )
    assert state.is_completed(), state
    result = state.result()
    assert result["promoted"] is False and "lower bound not above" in result["reason"]
    assert set(result["heldout"]) >= {"active_hybrid", "candidate_hybrid"}
    run = training_runs(repo_name)[0]
    assert run.id == result["run_id"] and run.decision == "retired" and run.device == "cpu"

    bad = finetune_retriever(repo="no-such-repo", encoder=str(tiny_encoder), pretrain_steps=0, return_state=True)
    assert bad.is_failed()


def test_train_retro_flow_stores_bits_per_byte_and_publishes_them(
    prefect_server, engine, repo_name, hashing, tmp_path, monkeypatch
):
    from flows.retro import train_retro_flow
    from grounding.config import reset_settings
    from grounding.index.ingest import ingest
    from grounding.training.runs import training_runs

    monkeypatch.setenv("GROUNDING_ENCODER", "hashing-64")  # the frozen retrieval encoder, fast
    reset_settings()
    ingest(str(copy_tree("requests", tmp_path / "requests")), name=repo_name, embedder=hashing)
    state = train_retro_flow(
        repo=repo_name, steps=3, batch_size=2, chunks_per_sequence=2, baseline=False, device="cpu", return_state=True
    )
    assert state.is_completed(), state
    result = state.result()
    assert {"retro_retrieval", "retro_no_retrieval"} <= set(result["bits_per_byte"])
    run = training_runs(repo_name, kind="retro")[0]
    assert run.id == result["run_id"] and run.status == "complete"


def test_train_reranker_flow_trains_gates_and_publishes(
    prefect_server, engine, repo_name, hashing, tiny_encoder, tmp_path, monkeypatch
):
    from flows.rerank import train_reranker_flow
    from grounding.config import reset_settings
    from grounding.index.ingest import ingest
    from grounding.training.runs import training_runs

    monkeypatch.setenv("GROUNDING_RERANK_CANDIDATES", "10")
    reset_settings()

    ingest(str(copy_tree("requests", tmp_path / "requests")), name=repo_name, embedder=hashing)
    state = train_reranker_flow(
        repo=repo_name, base=str(tiny_encoder), steps=3, batch_size=2, margin=100.0, device="cpu", return_state=True
    )
    assert state.is_completed(), state
    result = state.result()
    assert result["promoted"] is False and "lower bound not above" in result["reason"]
    assert set(result["heldout"]) == {"hybrid", "hybrid+candidate"}
    run = training_runs(repo_name, kind="reranker")[0]
    assert run.id == result["run_id"] and run.decision == "retired" and run.checkpoint == result["checkpoint"]

    assert train_reranker_flow(repo="no-such-repo", base=str(tiny_encoder), return_state=True).is_failed()


def test_scheduled_training_runs_every_repository_and_fails_naming_the_ones_that_failed(
    prefect_server, engine, repo_name, hashing, tmp_path
):
    from prefect import flow

    from flows.each_repo import each_repository
    from grounding.index.ingest import ingest

    src = tmp_path / "tiny"
    src.mkdir()
    (src / "a.py").write_text("def f():\n    return 1\n")
    good, bad, derived = f"{repo_name}-good", f"{repo_name}-bad", f"{repo_name}-good~eval-docstrings"
    for name in (good, bad):
        ingest(str(src), name=name, embedder=hashing)
    ingest(str(src), name=derived, embedder=hashing, derived_from=good)  # as build_eval_index does
    seen = []

    def job(name: str) -> dict:
        seen.append(name)
        if name == bad:
            raise ValueError("bad data")
        return {"trained": name}

    @flow
    def over_every_repository() -> dict:
        return each_repository(job, what="test training")

    state = over_every_repository(return_state=True)
    assert state.is_failed()
    message = str(state.message) + repr(state.result(raise_on_failure=False))
    assert f"test training failed for {bad}" in message and good in message
    assert good in seen and bad in seen and derived not in seen, "every repository, derived eval indexes excepted"

    seen.clear()
    clean = over_every_repository.with_options(name="over-every-repository-ok")
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM repositories WHERE name = :n"), {"n": bad})
    state = clean(return_state=True)
    assert state.is_completed() and state.result()[good] == {"trained": good}


def test_the_nightly_retriever_job_pretrains_only_where_a_gpu_is(monkeypatch):
    """A CPU worker must not take the GPU's 1000 REALM steps (38 hours a repository at ~139 s a step)."""
    import flows.finetune as finetune_flow

    seen = []
    monkeypatch.setattr(finetune_flow, "train_task", lambda repo, kwargs: seen.append(kwargs) or None)
    monkeypatch.setattr(finetune_flow, "_report", lambda repo, report: {})
    run = finetune_flow.finetune_retriever.fn
    run(repo="r", device="cpu")
    run(repo="r", device="cuda")
    run(repo="r", device="cpu", pretrain_steps=20)
    assert seen[0]["pretrain_config"] is None
    assert seen[1]["pretrain_config"].steps == finetune_flow.GPU_PRETRAIN_STEPS
    assert seen[2]["pretrain_config"].steps == 20, "asked for, it runs on the CPU too"
    import yaml

    deployments = yaml.safe_load((Path(__file__).parent.parent / "prefect.yaml").read_text())["deployments"]
    nightly = next(d for d in deployments if d["entrypoint"] == "flows/finetune.py:finetune_retriever")
    assert nightly["parameters"]["pretrain_steps"] is None


def test_an_ingest_queued_before_a_delete_registers_nothing_and_leaves_a_new_registration_alone(
    prefect_server, engine, repo_name, tmp_path, monkeypatch
):
    """A job of the API or the copilot may wait minutes for a worker; the repository deleted meanwhile (to
    remove what should never have been indexed) must not come back, nor a new one of that name be overwritten."""
    import types

    from grounding import store
    from grounding.config import reset_settings
    from grounding.errors import RepoNotFound
    from grounding.index.ingest import ingest
    from grounding.index.remove import remove_repo
    from grounding.service import jobs
    from tests.conftest import write_tree

    monkeypatch.setenv("GROUNDING_ENCODER", "hashing-64")
    reset_settings()
    leaked = write_tree(tmp_path / "leaked", {"pay/salaries.py": "def salary(name):\n    return 420_000\n"})
    replacement = write_tree(tmp_path / "new", {"app/greet.py": "def greet(name):\n    return f'hi {name}'\n"})
    ingest(str(leaked), name=repo_name)
    deferred = []

    class LateWorker:  # the job's thread, run by hand after the delete: a worker that takes the run late
        def __init__(self, target, args, **_):
            self.run = lambda: target(*args)

        def start(self):
            deferred.append(self)

    monkeypatch.setattr(jobs, "threading", types.SimpleNamespace(Thread=LateWorker))
    first = jobs.start(str(leaked), name=repo_name, ref=None, use_deployment=False)
    with engine.connect() as conn:
        assert first.repo_id == store.repo_id(conn, repo_name)
    remove_repo(repo_name)
    deferred.pop().run()
    assert first.status == "failed" and "was deleted after this ingest was queued" in first.error
    with pytest.raises(RepoNotFound), engine.connect() as conn:
        store.repo_id(conn, repo_name)

    ingest(str(leaked), name=repo_name)
    second = jobs.start(str(leaked), name=repo_name, ref=None, use_deployment=False)
    remove_repo(repo_name)
    ingest(str(replacement), name=repo_name)  # registered anew, from elsewhere, before the job runs
    with engine.connect() as conn:
        before = store.repo_record(conn, repo_name)
    deferred.pop().run()
    assert second.status == "failed" and "registered again" in second.error
    with engine.connect() as conn:
        after = store.repo_record(conn, repo_name)
        paths = set(conn.execute(sa.text("SELECT path FROM files WHERE repo_id = :r"), {"r": after.id}).scalars())
    assert after == before and paths == {"app/greet.py"}

    remove_repo(repo_name)
    third = jobs.start(str(leaked), name=repo_name, ref=None, use_deployment=False)  # queued for a new repository
    assert third.repo_id is None
    ingest(str(leaked), name=repo_name)  # registered meanwhile by another path (the CLI), then deleted
    remove_repo(repo_name)
    deferred.pop().run()
    assert third.status == "failed" and "was deleted after this ingest was queued" in third.error
    with pytest.raises(RepoNotFound), engine.connect() as conn:
        store.repo_id(conn, repo_name)


def test_refresh_fan_out_runs_carry_the_planned_repository(prefect_server, engine, repo_name, monkeypatch):
    """refresh-repos's ingest-repo runs wait for a worker too: each names the repository id it planned for."""
    import prefect.deployments

    from flows.refresh import _ingest_runs
    from grounding import store
    from grounding.index.refresh import RefreshPlan

    with engine.begin() as conn:
        planned = store.upsert_repo(conn, repo_name, source="https://git.example.com/acme/api.git", ref=None)
        mark = store.deletion_mark(conn)
    asked = []

    def run_deployment(name, *, parameters, **_):
        asked.append(parameters)
        raise RuntimeError("no Prefect API in this test")

    monkeypatch.setattr(prefect.deployments, "run_deployment", run_deployment)
    plan = RefreshPlan(repo_name, "https://git.example.com/acme/api.git", None, None, "a" * 40, planned, mark)
    rows = _ingest_runs([plan], timeout_s=1)
    assert (
        asked
        == [
            {
                "source": plan.source,
                "name": repo_name,
                "ref": None,
                "wait": False,
                "repo_id": planned,
                "deletion_mark": mark,
            }
        ]
        and rows[repo_name]["action"] == "failed"
    )


def test_a_fan_out_run_refused_because_its_repository_was_deleted_is_reported_deleted_not_failed(
    prefect_server, engine, repo_name, monkeypatch
):
    import types

    import prefect.client.orchestration
    import prefect.deployments

    from flows.refresh import _ingest_runs
    from grounding import store
    from grounding.index.refresh import RefreshPlan
    from grounding.index.remove import remove_repo

    plans = []
    for name in (repo_name, f"{repo_name}-other"):
        with engine.begin() as conn:
            planned = store.upsert_repo(conn, name, source=f"https://git.example.com/acme/{name}.git", ref=None)
            plans.append(RefreshPlan(name, "https://x", None, None, "a" * 40, planned, store.deletion_mark(conn)))
    remove_repo(repo_name)  # after its plan, before its run: the run refuses it
    failed = types.SimpleNamespace(type=types.SimpleNamespace(value="FAILED"), message="RepoNotFound: ...")

    class Client:  # every run ended FAILED
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read_flow_run(self, run_id):
            return types.SimpleNamespace(state=failed)

    monkeypatch.setattr(prefect.deployments, "run_deployment", lambda name, **_: types.SimpleNamespace(id=1, name="r"))
    monkeypatch.setattr(prefect.client.orchestration, "get_client", lambda **_: Client())
    rows = _ingest_runs(plans, timeout_s=5)
    assert rows[repo_name]["action"] == "deleted", rows
    assert rows[f"{repo_name}-other"]["action"] == "failed", "a run that failed for its own reasons still fails"
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM repositories WHERE name = :n"), {"n": f"{repo_name}-other"})
