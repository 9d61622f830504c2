"""Shards of one ingest: the changed files of a snapshot, split so that several workers write them side by side.

The ingest that opened the snapshot holds the repository's lock, lists the tree and decides what changed
(grounding.index.ingest); a shard is a list of those files by path and content hash. Whoever runs a shard
(this process, a Prefect task, a flow run on another worker: flows/ingest.py) calls `run_shard`, which
re-reads its files from the repository's own source, checks each still has the hash the ingest listed,
chunks, embeds and writes them into the running snapshot, and records its counts there. Nothing of it is
visible until the ingest, once every shard is written, finishes the snapshot.

A shard run again after its worker died reuses the files the dead run wrote (a write is one transaction
per batch, whole or absent) and writes the rest; a run that outlives its snapshot writes nothing
(`store.hold_running_snapshot`). Shard parameters carry no path of the server's disk: the source is
the repository's registered one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from grounding import db, store, validation
from grounding.config import get_settings
from grounding.errors import IngestError, InvalidArgument, RepoNotFound
from grounding.index import secrets, sources
from grounding.index.chunking import chunk_file
from grounding.index.embed import Embedder, load_embedder
from grounding.records import IndexVersion, SourceFile

MAX_SHARDS = 256


@dataclass(frozen=True)
class Shard:
    """Files of a running snapshot for one worker to write: (path, content hash) pairs, in listing order."""

    repo: str
    snapshot: int
    version: int  # the index version its vectors go to
    index: int
    files: tuple[tuple[str, str], ...]

    def parameters(self) -> dict:
        """The `ingest-shard` flow's parameters (JSON)."""
        return {
            "repo": self.repo,
            "snapshot": self.snapshot,
            "version": self.version,
            "index": self.index,
            "files": [list(f) for f in self.files],
        }


@dataclass
class ShardStats:
    """What writing some files did: counted per shard, summed into the ingest's report."""

    chunks_added: int = 0
    embedded: int = 0
    reused: int = 0  # vectors found for equal content, in this version or another of the same encoder
    files_resumed: int = 0  # files a dead run of the same shard had already written
    redacted: dict[str, int] = field(default_factory=dict)  # path -> secrets redacted from it
    seconds: dict[str, float] = field(default_factory=lambda: {"chunk": 0.0, "embed": 0.0, "write": 0.0})

    def add(self, other: ShardStats) -> None:
        self.chunks_added += other.chunks_added
        self.embedded += other.embedded
        self.reused += other.reused
        self.files_resumed += other.files_resumed
        self.redacted.update(other.redacted)
        for stage, secs in other.seconds.items():
            self.seconds[stage] = self.seconds.get(stage, 0.0) + secs

    @classmethod
    def from_json(cls, data: dict) -> ShardStats:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# Runs the shards (in any order, side by side or not) and returns once each has been written, or raises.
ShardRunner = Callable[[Sequence[Shard]], None]


def plan_shards(repo: str, snapshot: int, version: int, files: Sequence[SourceFile], *, count: int) -> list[Shard]:
    """Split `files` into at most `count` shards of about equal bytes (the cost of chunking and embedding)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SHARDS:
        raise InvalidArgument(f"shards must be a whole number from 1 to {MAX_SHARDS}, not {count!r}")
    count = min(count, len(files)) or 1
    loads = [0] * count
    members: list[list[SourceFile]] = [[] for _ in range(count)]
    for f in sorted(files, key=lambda f: (-f.size, f.path)):  # largest first, each to the lightest shard
        i = loads.index(min(loads))
        members[i].append(f)
        loads[i] += max(f.size, 1)
    order = {f.path: n for n, f in enumerate(files)}
    return [
        Shard(repo, snapshot, version, i, tuple((f.path, f.index_hash) for f in sorted(m, key=lambda f: order[f.path])))
        for i, m in enumerate(members)
        if m
    ]


def run_shard(repo: str, snapshot: int, version: int, index: int, files: Sequence[Sequence[str]]) -> ShardStats:
    """Write shard `index` (`files`: (path, content hash) pairs) into running `snapshot` of `repo`; see the module."""
    repo = validation.repo_name(repo, derived_ok=True)
    for name, value in (("snapshot", snapshot), ("version", version), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"{name} must be a whole number >= 0, not {value!r}")
    if not isinstance(files, (list, tuple)) or not all(
        isinstance(f, (list, tuple)) and len(f) == 2 and all(isinstance(x, str) for x in f) for f in files
    ):
        raise InvalidArgument("files must be a list of [path, content hash] pairs")
    settings = get_settings()
    engine = db.get_engine()
    with engine.connect() as conn:
        record = store.repo_record(conn, repo)
        if record is None:
            raise RepoNotFound(repo)
        snap = store.snapshot(conn, snapshot)
        target = store.index_version(conn, version)
    if snap is None or snap["repo_id"] != record.id or target is None or target.repo_id != record.id:
        raise InvalidArgument(f"snapshot {snapshot} and index version {version} are not both of repository {repo!r}")
    if snap["status"] != "running":
        raise IngestError(f"snapshot {snapshot} of {repo!r} is {snap['status']}, not running: its shards are over")
    checkout = sources.reopen(
        record.source,
        checkouts=settings.checkouts_dir,
        name=sources.checkout_key(record.id),
        commit=snap["commit"],
        ref=record.ref,
    )
    if checkout.commit != snap["commit"]:
        raise IngestError(
            f"{repo!r} is at commit {checkout.commit} on this worker, not {snap['commit']} as the ingest read it; "
            "rerun the ingest"
        )
    with engine.connect() as conn:
        written = store.snapshot_files(conn, record.id, snapshot)
    todo: list[SourceFile] = []
    stats = ShardStats()
    t = time.perf_counter()
    for path, content_hash in files:
        if (path, content_hash) in written:
            stats.files_resumed += 1
            continue
        found = sources.read_file(
            checkout.root, path, max_bytes=settings.max_file_bytes, max_line_length=settings.max_line_length
        )
        if not isinstance(found, SourceFile) or found.index_hash != content_hash:
            raise IngestError(
                f"{path!r} of {repo!r} is not on this worker as the ingest listed it (changed while it ran, or "
                "its source is a directory this worker does not have); rerun the ingest"
            )
        todo.append(found)
    stats.seconds["read"] = time.perf_counter() - t
    if todo:
        stats.add(write_batches(engine, record.id, snapshot, target, todo, embedder=load_embedder(target.encoder)))
    with engine.begin() as conn:
        if not store.record_shard(conn, snapshot, index, dataclasses.asdict(stats)):
            raise IngestError(f"snapshot {snapshot} of {repo!r} ended while shard {index} was written")
    return stats


def write_batches(
    engine,
    repo: int,
    snapshot: int,
    version: IndexVersion,
    files: Sequence[SourceFile],
    *,
    embedder: Embedder,
    progress: Callable[[int], None] | None = None,
    after_batch: Callable[[int], None] | None = None,
) -> ShardStats:
    """Chunk, embed and write `files` into running `snapshot`, a transaction per batch of files.

    Vectors already computed for equal content (this version, or another of the same encoder) are
    reused. `progress(files_done)` follows each batch; `after_batch(b)` is a test's hook."""
    settings = get_settings()
    stats = ShardStats()
    counter = embedder.token_counter()
    batch_size = max(1, settings.write_batch_files)
    for b, lo in enumerate(range(0, len(files), batch_size)):
        batch = files[lo : lo + batch_size]
        t = time.perf_counter()
        chunked = []
        for f in batch:
            data, found = secrets.redact_bytes(f.data)
            if found:
                stats.redacted[f.path] = len(found)
            chunks = chunk_file(f.path, data, f.language, max_tokens=settings.chunk_tokens, counter=counter)
            chunked.append((f, chunks))
        stats.seconds["chunk"] += time.perf_counter() - t

        t = time.perf_counter()
        all_chunks = [c for _, cs in chunked for c in cs]
        hashes = [c.content_hash for c in all_chunks]
        with engine.begin() as conn:
            known = store.embeddings_by_hash(conn, repo, version.id, sorted(set(hashes)))
            unknown = sorted(set(hashes) - known.keys())
            if unknown:
                known.update(store.shared_embeddings(conn, repo, encoder=version.encoder, hashes=unknown))
        missing = {h: c.embed_text for h, c in zip(hashes, all_chunks) if h not in known}
        if missing:
            vectors = embedder.embed(list(missing.values()), batch_size=settings.embed_batch_size)
            known.update(zip(missing.keys(), vectors))
        stats.embedded += len(missing)
        stats.reused += len(all_chunks) - len(missing)
        stats.seconds["embed"] += time.perf_counter() - t

        t = time.perf_counter()
        matrix = np.stack([known[h] for h in hashes]) if hashes else np.zeros((0, version.dim), np.float32)
        with engine.begin() as conn:
            if not store.hold_running_snapshot(conn, repo, snapshot):
                raise IngestError(f"snapshot {snapshot} ended while its files were written")
            store.write_files(conn, repo, snapshot, version, files=chunked, vectors=matrix)
        stats.chunks_added += len(all_chunks)
        stats.seconds["write"] += time.perf_counter() - t
        if progress:
            progress(min(lo + batch_size, len(files)))
        if after_batch:
            after_batch(b)
    return stats


def run_in_process(shards: Sequence[Shard]) -> None:
    """A ShardRunner: each shard in turn, here (a test, a script, a flow with no worker to fan out to)."""
    for shard in shards:
        run_shard(shard.repo, shard.snapshot, shard.version, shard.index, shard.files)
