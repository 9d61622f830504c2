"""Re-embed a repository's chunks into a new index version beside the active one, verify, then swap it in.

Queries keep answering from the active version the whole time: the new vectors are written under a
version that is `building`, with their own partial HNSW index. Activation is one transaction; the old
version is retired and its vectors stay for a grace period, so a query that looked up the old
version just before the swap still finishes on it. A reindex that dies leaves the old version
active; the next run under the lock sweeps what it left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from grounding import db, store
from grounding.config import get_settings
from grounding.errors import GroundingError, IngestError, NotIndexed
from grounding.index.embed import Embedder, load_embedder

log = logging.getLogger(__name__)

PAGE = 1000  # chunks read, embedded and written per transaction
PROBES = 5  # chunks whose own vector must come back first from the new index


@dataclass(frozen=True)
class ReindexReport:
    repo: str
    version: int
    previous_version: int | None
    encoder: str
    chunks: int
    embedded: int  # distinct texts through the encoder (equal chunks share one pass)
    collected: tuple[int, ...]  # versions whose vectors were removed
    seconds: dict[str, float] = field(default_factory=dict)


def reindex(
    repo: str,
    *,
    encoder: str | None = None,
    embedder: Embedder | None = None,
    query_encoder: str | None = None,
    activate: bool = True,
    copy_from: int | None = None,
    grace_seconds: float = 600.0,
    wait: bool = True,
    after_page: Callable[[int], None] | None = None,
) -> ReindexReport:
    """Build a new index version of `repo` with `encoder` (default: the configured one) and activate it.

    `query_encoder` names a different encoder for questions (a trained query tower). With
    `activate=False` the version is left as a `candidate` for the promotion gate. `copy_from` (a version
    made by the same document encoder) copies its vectors instead of re-embedding: a new query tower
    over an unchanged document tower needs no pass over the corpus.
    """
    engine = db.get_engine()
    embedder = embedder or load_embedder(encoder or get_settings().encoder)
    seconds = {"embed": 0.0, "write": 0.0, "index": 0.0, "verify": 0.0}
    with store.repo_lock(engine, repo, wait=wait):
        with engine.begin() as conn:
            repo_id = store.repo_id(conn, repo)
            previous = store.active_index_version(conn, repo_id)
            if store.current_snapshot(conn, repo_id)[0] is None:
                raise NotIndexed(f"repository {repo!r} has no complete snapshot yet; ingest it first")
            collected = store.collect_index_versions(conn, repo_id, grace_seconds=grace_seconds)
            source = None
            if copy_from is not None:
                source = store.index_version(conn, copy_from)
                if source is None or source.repo_id != repo_id or source.encoder != embedder.name:
                    raise ValueError(
                        f"version {copy_from} is not a {embedder.name} version of {repo!r}: cannot copy it"
                    )
            version = store.create_index_version(
                conn, repo_id, encoder=embedder.name, dim=embedder.dim, query_encoder=query_encoder
            )
        try:
            if source is not None:
                t = time.perf_counter()
                with engine.begin() as conn:
                    chunks, embedded = store.copy_version_embeddings(conn, source, version), 0
                seconds["write"] = time.perf_counter() - t
            else:
                chunks, embedded = _embed_all(engine, repo_id, version, embedder, seconds, after_page)
            with engine.begin() as conn:
                t = time.perf_counter()
                store.build_vector_index(conn, version)
                seconds["index"] = time.perf_counter() - t
            t = time.perf_counter()
            with engine.begin() as conn:
                _verify(conn, repo_id, version, embedder, chunks)
                if activate:
                    store.activate_index_version(conn, version)
                else:
                    store.set_index_version_status(conn, version.id, "candidate")
            seconds["verify"] = time.perf_counter() - t
        except BaseException as err:
            with engine.begin() as conn:
                store.drop_index_version(conn, version.id, status="failed", note=f"{type(err).__name__}: {err}"[:1000])
            if isinstance(err, (GroundingError, KeyboardInterrupt, SystemExit)):
                raise
            raise IngestError(
                f"reindex of {repo!r} failed ({err}); version {previous and previous.id} stays active"
            ) from err
    log.info(
        "reindexed %s into %s version %d (%d chunks)", repo, "active" if activate else "candidate", version.id, chunks
    )
    return ReindexReport(
        repo=repo,
        version=version.id,
        previous_version=previous.id if previous else None,
        encoder=embedder.name,
        chunks=chunks,
        embedded=embedded,
        collected=tuple(collected),
        seconds=seconds,
    )


def _embed_all(engine, repo_id, version, embedder, seconds, after_page) -> tuple[int, int]:
    settings = get_settings()
    after, chunks, embedded, page_no = 0, 0, 0, 0
    vectors_by_hash: dict[str, object] = {}
    while True:
        with engine.begin() as conn:
            page = store.visible_chunks_page(conn, repo_id, after_id=after, limit=PAGE)
        if not page:
            return chunks, embedded
        t = time.perf_counter()
        missing = {h: text for _, h, text in page if h not in vectors_by_hash}
        if missing:
            vectors = embedder.embed(list(missing.values()), batch_size=settings.embed_batch_size)
            vectors_by_hash.update(zip(missing.keys(), vectors))
        embedded += len(missing)
        seconds["embed"] += time.perf_counter() - t
        t = time.perf_counter()
        with engine.begin() as conn:
            store.copy_embeddings(
                conn,
                version,
                chunk_ids=[cid for cid, _, _ in page],
                vectors=np.stack([vectors_by_hash[h] for _, h, _ in page]),
            )
        seconds["write"] += time.perf_counter() - t
        chunks += len(page)
        after = page[-1][0]
        if after_page:
            after_page(page_no)
        page_no += 1


def _verify(conn, repo_id, version, embedder, chunks: int) -> None:
    """Every visible chunk has a vector, and the new index finds chunks by their own text."""
    stored = store.count_version_embeddings(conn, version.id)
    visible = store.count_visible_chunks(conn, repo_id)
    if stored != visible or stored != chunks:
        raise IngestError(f"version {version.id} holds {stored} vectors for {visible} visible chunks")
    page = store.visible_chunks_page(conn, repo_id, after_id=0, limit=PROBES)
    probes = embedder.embed([text for _, _, text in page])
    for (cid, _, _), vector in zip(page, probes):
        nearest = store.nearest_in_version(conn, version, vector, k=1)
        # Its own vector (or an equal chunk's) must come first: inner product 1 for unit vectors.
        if not nearest or nearest[0][1] < 0.99:
            raise IngestError(f"probe failed: chunk {cid} does not find itself in version {version.id}: {nearest}")
