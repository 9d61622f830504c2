"""Shards of one ingest: the changed files of a snapshot, split so that several workers write them side by side.

The ingest that opened the snapshot holds the repository's lock, lists the tree and decides what changed
(grounding.index.ingest); a shard is a list of those files by path and content hash, and the plan of
every shard is stored with the snapshot (`ingest_shards`) before any runs. Whoever runs a shard (this
process, a Prefect task, a flow run on another worker: flows/ingest.py) calls `run_shard(repo, snapshot,
shard)`, which reads its files from the plan, re-reads them from the repository's registered source,
checks each still has the hash the ingest listed, then chunks, embeds and writes them into the running
snapshot, each batch's counts in the transaction that writes its rows. Nothing of it is visible until
the ingest, once every shard is written, finishes the snapshot.

A shard run again after its worker died reuses the files the dead run wrote (a write is one transaction
per batch, whole or absent) and writes the rest; a run that outlives its snapshot writes nothing (every
batch holds the snapshot's row while it writes, and finishing takes that row first). A shard's
parameters name no file: no caller can make a shard read a path the ingest did not list.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.engine import Connection

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
        """The `ingest-shard` flow's parameters: which shard of which snapshot; its files are in the plan."""
        return {"repo": self.repo, "snapshot": self.snapshot, "index": self.index}


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

    def summary(self) -> dict:
        """Counts only, for a flow run's result: which files held secrets stays in the database."""
        counts = dataclasses.asdict(self)
        counts["redacted"] = sum(self.redacted.values())
        return counts

    @classmethod
    def from_batches(cls, batches: Sequence[dict]) -> ShardStats:
        """The sum of the counts write batches recorded (store.add_shard_batch)."""
        total = cls()
        names = {f.name for f in dataclasses.fields(cls)}
        for batch in batches:
            total.add(cls(**{k: v for k, v in batch.items() if k in names}))
        return total


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


def run_shard(repo: str, snapshot: int, index: int) -> ShardStats:
    """Write shard `index` of running `snapshot` of `repo`, as the ingest planned it; see the module."""
    repo = validation.repo_name(repo, derived_ok=True)
    for name, value in (("snapshot", snapshot), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"{name} must be a whole number >= 0, not {value!r}")
    settings = get_settings()
    engine = db.get_engine()
    with engine.connect() as conn:
        record = store.repo_record(conn, repo)
        if record is None:
            raise RepoNotFound(repo)
        snap = store.snapshot(conn, snapshot)
        plan = store.shard_plan(conn, snapshot, index) if snap is not None and snap["repo_id"] == record.id else None
        target = store.index_version(conn, plan[0]) if plan is not None else None
    if plan is None or target is None or target.repo_id != record.id:
        raise InvalidArgument(f"snapshot {snapshot} of repository {repo!r} has no shard {index}")
    with engine.begin() as conn:
        # The snapshot's row is held while the checkout may move: the repository's next ingest fails a dead run's
        # snapshot (store.fail_interrupted) before it opens the checkout, so it waits for this, or this refuses.
        if not store.hold_running_snapshot(conn, record.id, snapshot):
            raise IngestError(f"snapshot {snapshot} of {repo!r} is not running: its shards are over")
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
    for path, content_hash in plan[1]:
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

        def record_batch(conn, counts: dict) -> None:
            store.add_shard_batch(conn, snapshot, index, counts)

        stats.add(
            write_batches(
                engine,
                record.id,
                snapshot,
                target,
                todo,
                embedder=load_embedder(target.encoder),
                shard=index,
                record=record_batch,
            )
        )
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
    shard: int | None = None,
    record: Callable[[Connection, dict], None] | None = None,
) -> ShardStats:
    """Chunk, embed and write `files` into running `snapshot`, a transaction per batch of files.

    Vectors already computed for equal content (this version, or another of the same encoder) are
    reused. For a `shard`, files another run of it wrote meanwhile are left out (store.claim_files), and
    `record(conn, counts)` keeps a batch's counts in the transaction that writes it;
    `progress(files_done)` follows each batch; `after_batch(b)` is a test's hook."""
    settings = get_settings()
    stats = ShardStats()
    counter = embedder.token_counter()
    batch_size = max(1, settings.write_batch_files)
    for b, lo in enumerate(range(0, len(files), batch_size)):
        batch = files[lo : lo + batch_size]
        counts = ShardStats()
        t = time.perf_counter()
        chunked = []
        for f in batch:
            data, found = secrets.redact_bytes(f.data)
            if found:
                counts.redacted[f.path] = len(found)
            chunks = chunk_file(f.path, data, f.language, max_tokens=settings.chunk_tokens, counter=counter)
            chunked.append((f, chunks))
        counts.seconds["chunk"] += time.perf_counter() - t

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
        counts.seconds["embed"] += time.perf_counter() - t

        t = time.perf_counter()
        with engine.begin() as conn:
            if not store.hold_running_snapshot(conn, repo, snapshot):
                raise IngestError(f"snapshot {snapshot} ended while its files were written")
            if shard is not None:  # another run of this shard may have written some of them meanwhile
                taken = store.claim_files(conn, repo, snapshot, shard, [(f.path, f.index_hash) for f, _ in chunked])
                if taken:
                    chunked = [(f, cs) for f, cs in chunked if (f.path, f.index_hash) not in taken]
                    counts.files_resumed += len(taken)
            hashes = [c.content_hash for _, cs in chunked for c in cs]
            matrix = np.stack([known[h] for h in hashes]) if hashes else np.zeros((0, version.dim), np.float32)
            store.write_files(conn, repo, snapshot, version, files=chunked, vectors=matrix)
            counts.chunks_added = len(hashes)  # what this run wrote: files another run wrote are not counted twice
            counts.embedded = len(set(hashes) & missing.keys())
            counts.reused = len(hashes) - counts.embedded
            counts.seconds["write"] += time.perf_counter() - t
            if record:
                record(conn, dataclasses.asdict(counts))
        stats.add(counts)
        if progress:
            progress(min(lo + batch_size, len(files)))
        if after_batch:
            after_batch(b)
    return stats


def run_in_process(shards: Sequence[Shard]) -> None:
    """A ShardRunner: each shard in turn, here (a test, a script, a flow with no worker to fan out to)."""
    for shard in shards:
        run_shard(shard.repo, shard.snapshot, shard.index)
