"""The ingest-repo flow run by Prefect (a real flow run against a temporary Prefect server)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.conftest import copy_tree


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


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


def test_flow_fails_without_retry_on_a_missing_path(prefect_server, engine, tmp_path):
    from flows.ingest import ingest_repo

    state = ingest_repo(str(tmp_path / "missing"), name="missing", return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="does not exist"):
        state.result()
