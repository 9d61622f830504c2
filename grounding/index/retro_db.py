"""The RETRO retrieval database: a repository's files as fixed-length chunks of LM tokens, and their neighbours.

Each file's token stream (ending in eos) is cut into consecutive m-token chunks, as in RETRO, and
every chunk's text is embedded with a frozen encoder. Files are split train/held-out by
`records.split_of`; training and its evaluation retrieve train chunks only, so a held-out file is never
a neighbour there, while a completion (`retrieve(..., train_only=False)`) reads every file.
A chunk's neighbours come from other files only: a chunk must not retrieve its own file's
continuation. A retrieved neighbour is the chunk followed by the next chunk of its file (r = 2m).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from grounding import store
from grounding.config import get_settings
from grounding.db import get_engine
from grounding.errors import EmptyRepository, NotIndexed
from grounding.index import secrets, sources
from grounding.index.embed import Embedder, load_embedder
from grounding.index.lm_tokenizer import LMTokenizer
from grounding.records import SourceFile, split_of

log = logging.getLogger(__name__)

NEIGHBOUR_BATCH = 256  # chunks searched per statement, and written to the cache per transaction
# A completion that started on a database just retired still reads it for a few seconds; a week later
# (train-retro's schedule) nothing does.
RETIRED_GRACE_SECONDS = 600


RETRIEVERS = ("dense", "bm25")


@dataclass(frozen=True)
class RetroDbConfig:
    """How a database is cut and searched: m tokens per chunk, k neighbours, the frozen encoder."""

    chunk_tokens: int = 64
    neighbours: int = 2
    encoder: str | None = None  # None: the configured encoder (GROUNDING_ENCODER)
    # How neighbours are found: `dense`, the frozen encoder's inner product; `bm25`, BM25 over the chunks' LM
    # tokens and their bigrams (token_bm25), which holds more text a model can copy (bench/retro_timesplit.py).
    retriever: str = "dense"

    def __post_init__(self) -> None:
        if self.chunk_tokens < 1 or self.neighbours < 1:
            raise ValueError(
                f"chunk_tokens and neighbours must be at least 1, not {self.chunk_tokens}, {self.neighbours}"
            )
        if self.retriever not in RETRIEVERS:
            raise ValueError(f"retriever must be one of {', '.join(RETRIEVERS)}, not {self.retriever!r}")

    def resolved_encoder(self) -> str:
        return self.encoder or get_settings().encoder

    def key(self) -> str:
        """Names the neighbours this configuration finds: equal keys, equal neighbours of one database."""
        fields = {"chunk_tokens": self.chunk_tokens, "neighbours": self.neighbours, "encoder": self.resolved_encoder()}
        if self.retriever != "dense":  # the keys of dense neighbours cached before stay what they were
            fields["retriever"] = self.retriever
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()[:16]
        return f"m{self.chunk_tokens}-k{self.neighbours}-{digest}"


@dataclass(frozen=True)
class RetroChunk:
    """m consecutive tokens of one file, with the 1-based inclusive lines its text spans."""

    id: int
    path: str
    split: str  # train or heldout
    ordinal: int  # position within the file
    tokens: tuple[int, ...]
    text: str
    start_line: int
    end_line: int


@dataclass(frozen=True)
class RetroDatabase:
    id: int
    repo: str
    commit: str | None
    tokenizer: str  # directory of the LM tokenizer
    chunk_tokens: int
    encoder: str
    dim: int
    status: str  # building, ready, retired, failed


@dataclass(frozen=True)
class Neighbour:
    """A retrieved chunk followed by its continuation, and where it comes from, for citation."""

    chunk_id: int
    path: str
    start_line: int
    end_line: int  # of the continuation, when there is one
    commit: str | None
    tokens: tuple[int, ...]  # 2m tokens, fewer at a file's end
    text: str
    score: float  # inner product with the query; 0.0 where none was asked (neighbour_tokens)


# --- cutting files (pure) --------------------------------------------------------------------------


def chunk_file(tokens: Sequence[int], m: int) -> list[tuple[int, int]]:
    """Token index spans [start, end) of consecutive m-token chunks; the last one may be shorter."""
    if m < 1:
        raise ValueError(f"chunk length must be at least 1, not {m}")
    return [(start, min(start + m, len(tokens))) for start in range(0, len(tokens), m)]


def cut_file(path: str, text: str, tokenizer: LMTokenizer, m: int) -> list[tuple[str, str, int, tuple, str, int, int]]:
    """(path, split, ordinal, tokens, text, start_line, end_line) of each chunk of a file's tokens and eos.

    A chunk's text is the file's substring its tokens spell, so the chunks' texts add up to the
    file; a character whose bytes a chunk boundary splits goes with the chunk where it starts
    (decoding the tokens alone would give replacement characters at both ends).
    """
    ids, spans = tokenizer.encode_spans(text)
    ids = [*ids, tokenizer.eos_id]
    # Where each token's text begins: where the previous token's characters end.
    cuts = [0, *(end for _, end in spans), len(text)]
    newlines = [i for i, c in enumerate(text) if c == "\n"]
    last = max(len(text) - 1, 0)

    def line_of(char: int) -> int:
        return bisect.bisect_left(newlines, min(char, last)) + 1

    split = split_of(path)
    out = []
    for ordinal, (lo, hi) in enumerate(chunk_file(ids, m)):
        first, end = cuts[lo], max(cuts[hi], cuts[lo])
        # A chunk's last line is that of its last character (a newline belongs to the line it ends).
        lines = (line_of(first), line_of(max(end - 1, first)))
        out.append((path, split, ordinal, tuple(ids[lo:hi]), text[first:end], *lines))
    return out


def exact_neighbours(vectors: np.ndarray, paths: Sequence[str], train: Sequence[bool], *, k: int) -> list[list[int]]:
    """Row indices of the k train rows nearest each row by inner product, from other paths, nearest first."""
    names = {p: i for i, p in enumerate(dict.fromkeys(paths))}
    path_ids = np.array([names[p] for p in paths])
    pool = np.flatnonzero(np.asarray(train, dtype=bool))
    out: list[list[int]] = []
    for lo in range(0, len(vectors), 1024):
        scores = vectors[lo : lo + 1024] @ vectors[pool].T  # (batch, train)
        scores[path_ids[lo : lo + 1024, None] == path_ids[None, pool]] = -np.inf
        for row in scores:
            n = min(k, int(np.isfinite(row).sum()))
            top = np.argpartition(-row, n - 1)[:n] if n else np.array([], dtype=int)
            top = top[np.lexsort((pool[top], -row[top]))]
            out.append([int(pool[i]) for i in top])
    return out


def aligned_window(
    query: Sequence[int], file_tokens: Sequence[int], start: int, *, r: int, pad: int, ngrams: Sequence[int] = (8, 4)
) -> tuple[int, ...]:
    """r tokens of a retrieved file whose first half ends where `query` (the retrieving chunk) ends in it.

    `start` is where the retrieved chunk begins. The last n tokens of the query (n = 8, else 4) are looked for
    within a chunk of it; the window is placed so they end at r/2, and padded in front where the file begins
    later. Aligned so, a neighbour's token at p stands where the chunk's token at p would, and its second half
    is what follows the query's text in that file: what rotary CCA copies. Where no n-gram is shared, the
    chunk and its continuation as stored."""
    half = r // 2
    lo, hi = max(0, start - half), min(len(file_tokens), start + 2 * half)
    for n in ngrams:
        tail = tuple(query[-n:])
        if len(tail) < n:
            continue
        ends = [p + n for p in range(lo, hi - n + 1) if tuple(file_tokens[p : p + n]) == tail]
        if ends:
            end = min(ends, key=lambda e: (abs(e - half - start), e))  # nearest the chunk retrieved
            first = end - len(query)
            window = list(file_tokens[max(first, 0) : first + r])
            return (*([pad] * max(-first, 0)), *window)[:r]
    return tuple(file_tokens[start : start + r])


def aligned_neighbours(
    chunks: Sequence[RetroChunk], neighbour_ids: dict[int, Sequence[int]], *, r: int, pad: int
) -> tuple[dict[int, list[tuple[int, int]]], dict[tuple[int, int], tuple[int, ...]]]:
    """Every chunk's neighbours as windows aligned to it (aligned_window), from the database's chunks in memory:
    ({chunk id: [(chunk id, neighbour id), ...]}, {(chunk id, neighbour id): r tokens}), for build_grid."""
    streams: dict[str, list[int]] = {}
    where: dict[int, tuple[str, int]] = {}
    for c in sorted(chunks, key=lambda c: (c.path, c.ordinal)):
        stream = streams.setdefault(c.path, [])
        where[c.id] = (c.path, len(stream))
        stream.extend(c.tokens)
    by_id = {c.id: c for c in chunks}
    ids: dict[int, list[tuple[int, int]]] = {}
    windows: dict[tuple[int, int], tuple[int, ...]] = {}
    for cid, hits in neighbour_ids.items():
        ids[cid] = []
        for nid in hits:
            path, start = where[nid]
            windows[(cid, nid)] = aligned_window(by_id[cid].tokens, streams[path], start, r=r, pad=pad)
            ids[cid].append((cid, nid))
    return ids, windows


def align(db: RetroDatabase, query: Sequence[int], found: Sequence[Neighbour], *, r: int, pad: int) -> list[Neighbour]:
    """Retrieved neighbours with their tokens aligned to the chunk `query` that retrieved them (generation)."""
    with get_engine().connect() as conn:
        around = store.retro_chunks_around(conn, db.id, [nb.chunk_id for nb in found])
    out = []
    for nb in found:
        stream, start = around.get(nb.chunk_id, (list(nb.tokens), 0))
        out.append(replace(nb, tokens=aligned_window(query, stream, start, r=r, pad=pad)))
    return out


# --- building --------------------------------------------------------------------------------------


def _read_files(repo: str) -> tuple[int, int | None, str | None, list[SourceFile]]:
    """(repo id, current snapshot, commit, UTF-8 files) of the repository's source, read under its lock."""
    settings = get_settings()
    engine = get_engine()
    with store.repo_lock(engine, repo):
        with engine.begin() as conn:
            source, ref, commit = store.repo_source(conn, repo)
            rid = store.repo_id(conn, repo)
            snapshot, _ = store.current_snapshot(conn, rid)
            store.fail_interrupted(conn, rid)  # a dead ingest's shard must not move the checkout under us
        checkout = sources.reopen(
            source, checkouts=settings.checkouts_dir, name=sources.checkout_key(rid), commit=commit, ref=ref
        )
        listing = sources.list_files(
            checkout, max_bytes=settings.max_file_bytes, max_line_length=settings.max_line_length
        )
    return rid, snapshot, checkout.commit, [f for f in listing.files if not f.decode_errors]


def repository_texts(repo: str, *, split: str | None = None) -> list[tuple[str, str]]:
    """(path, text) of the repository's current UTF-8 files, of one split if named, in path order."""
    if split not in (None, "train", "heldout"):
        raise ValueError(f"split must be train or heldout, not {split!r}")
    _, _, _, files = _read_files(repo)
    chosen = [f for f in sorted(files, key=lambda f: f.path) if split is None or split_of(f.path) == split]
    return [(f.path, _text(f)) for f in chosen]


def _text(f: SourceFile) -> str:
    """A file's text with its secrets redacted, line for line: the tokenizer, the model and its
    completions never see them (see grounding.index.secrets)."""
    return secrets.redact(f.data.decode("utf-8"))[0]


def _fingerprint(files: Sequence[SourceFile], tokenizer: LMTokenizer) -> str:
    # The redaction rules are part of what the chunks hold: new rules rebuild the database.
    h = hashlib.sha256(f"{tokenizer.digest}\0redaction-{secrets.RULES_VERSION}".encode())
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"\0{f.path}\0{f.content_hash}".encode())
    return h.hexdigest()


def _database(row: dict) -> RetroDatabase:
    return RetroDatabase(
        row["id"],
        row["repo"],
        row["commit"],
        row["tokenizer"],
        row["chunk_tokens"],
        row["encoder"],
        row["dim"],
        row["status"],
    )


def build_database(
    repo: str, tokenizer: LMTokenizer, *, config: RetroDbConfig = RetroDbConfig(), embedder: Embedder | None = None
) -> RetroDatabase:
    """Cut the repository's current files into chunks, embed and index them; retire the database it replaces.

    A ready database built from the same files, tokenizer, chunk length and encoder is returned as it is.
    Databases retired more than RETIRED_GRACE_SECONDS ago are collected first.
    """
    if not tokenizer.name:
        raise ValueError("save the tokenizer (LMTokenizer.save) first: the database records where it lives")
    if embedder is not None and config.encoder is not None and embedder.name != config.encoder:
        raise ValueError(f"the embedder is {embedder.name!r} but the configuration names {config.encoder!r}")
    encoder = embedder.name if embedder is not None else config.resolved_encoder()
    m = config.chunk_tokens
    t0 = time.perf_counter()
    rid, snapshot, commit, files = _read_files(repo)
    if not files:
        raise EmptyRepository(f"repository {repo!r} has no UTF-8 text file to build a retrieval database from")
    fingerprint = _fingerprint(files, tokenizer)
    collect_retired(repo)
    engine = get_engine()
    with engine.connect() as conn:
        found = store.matching_retro_database(
            conn, rid, tokenizer=tokenizer.name, chunk_tokens=m, encoder=encoder, fingerprint=fingerprint
        )
    if found is not None:
        log.info("retrieval database %d of %s is up to date", found["id"], repo)
        return _database(found)

    rows = [row for f in sorted(files, key=lambda f: f.path) for row in cut_file(f.path, _text(f), tokenizer, m)]
    embedder = embedder or load_embedder(encoder)
    log.info("embedding %d chunks of %d files of %s", len(rows), len(files), repo)
    vectors = embedder.embed([row[4] for row in rows], batch_size=get_settings().embed_batch_size)
    train = sum(row[1] == "train" for row in rows)
    stats = {
        "files": len(files),
        "chunks": len(rows),
        "train_chunks": train,
        "heldout_chunks": len(rows) - train,
        "tokens": sum(len(row[3]) for row in rows),
        "fingerprint": fingerprint,
        "tokenizer_digest": tokenizer.digest,
    }
    with engine.begin() as conn:
        did = store.create_retro_database(
            conn,
            rid,
            snapshot=snapshot,
            commit=commit,
            tokenizer=tokenizer.name,
            chunk_tokens=m,
            encoder=encoder,
            dim=embedder.dim,
            stats=stats,
        )
    try:
        with engine.begin() as conn:
            store.copy_retro_chunks(conn, did, chunks=rows, vectors=vectors)
            store.build_retro_index(conn, did, dim=embedder.dim)
            retired = store.finish_retro_database(conn, did, stats={"seconds": round(time.perf_counter() - t0, 2)})
    except BaseException as err:
        with engine.begin() as conn:
            store.fail_retro_database(conn, did, error=f"{type(err).__name__}: {err}")
        raise
    log.info("retrieval database %d of %s: %d chunks; retired %s", did, repo, len(rows), retired or "none")
    with engine.connect() as conn:
        return _database(store.retro_database(conn, did))


def follow_snapshot(repo: str, files: Sequence[SourceFile], *, snapshot: int, commit: str | None) -> list[dict]:
    """Bring every ready database of `repo` to `snapshot` (whose files are `files`), changed files only.

    A file whose text the database holds as it is keeps its chunks and vectors; a changed or new file is
    cut and embedded again; a deleted one goes. Ingest calls this once a snapshot is current, so a
    completion reads the code as it is now. A database whose fingerprint already matches the files costs
    nothing more; one whose tokenizer is not on this host, or was retrained since, is left as it is (and
    says so). The changes are worked out and embedded outside any transaction, then written in a short
    one, only if no other follow wrote the database meanwhile. Returns what was done per database."""
    from grounding.index.lm_tokenizer import load_tokenizer

    files = [f for f in files if not f.decode_errors]
    engine = get_engine()
    with engine.connect() as conn:
        databases = store.ready_retro_databases(conn, store.repo_id(conn, repo))
    done = []
    for row in databases:
        try:
            tokenizer = load_tokenizer(row["tokenizer"])
        except Exception as err:  # noqa: BLE001 - another host's tokenizer: this one cannot cut files for it
            log.warning("retrieval database %d of %s stays at its snapshot: %s", row["id"], repo, err)
            continue
        held_fingerprint = row["stats"].get("fingerprint")
        if tokenizer.digest != row["stats"].get("tokenizer_digest", tokenizer.digest):
            log.warning("retrieval database %d of %s stays: its tokenizer was retrained since", row["id"], repo)
            continue
        fingerprint = _fingerprint(files, tokenizer)
        if fingerprint == held_fingerprint:
            continue  # it holds these files already
        t0 = time.perf_counter()
        texts = {f.path: _text(f) for f in files}
        with engine.connect() as conn:
            held = store.retro_file_texts(conn, row["id"])
        gone = sorted(set(held) - set(texts))
        changed = sorted(p for p, text in texts.items() if held.get(p) != text)
        rows = [r for p in changed for r in cut_file(p, texts[p], tokenizer, row["chunk_tokens"])]
        vectors = None
        if rows:
            vectors = load_embedder(row["encoder"]).embed(
                [r[4] for r in rows], batch_size=get_settings().embed_batch_size
            )
        stats = {
            "fingerprint": fingerprint,
            "files": len(texts),
            "followed": {"snapshot": snapshot, "changed": len(changed), "deleted": len(gone), "chunks": len(rows)},
        }
        with engine.begin() as conn:
            if not store.lock_retro_database(conn, row["id"], before=snapshot, fingerprint=held_fingerprint):
                log.info("retrieval database %d of %s: another follow wrote it first", row["id"], repo)
                continue
            store.advance_retro_database(
                conn, row["id"], snapshot=snapshot, commit=commit, paths=gone + changed, stats=stats
            )
            if rows:
                store.copy_retro_chunks(conn, row["id"], chunks=rows, vectors=vectors)
            store.recount_retro_database(conn, row["id"])
        seconds = round(time.perf_counter() - t0, 2)
        log.info(
            "retrieval database %d of %s follows snapshot %d: %d files changed, %d deleted, %d chunks (%.2f s)",
            row["id"],
            repo,
            snapshot,
            len(changed),
            len(gone),
            len(rows),
            seconds,
        )
        done.append({"database": row["id"], "changed": changed, "deleted": gone, "chunks": len(rows)})
    return done


def collect_retired(repo: str, *, grace_seconds: float = RETIRED_GRACE_SECONDS) -> list[int]:
    """Free the rows of the repository's databases retired more than `grace_seconds` ago; their ids."""
    with get_engine().begin() as conn:
        collected = store.collect_retro_databases(conn, store.repo_id(conn, repo), older_than_seconds=grace_seconds)
    if collected:
        log.info("collected retired retrieval databases %s of %s", collected, repo)
    return collected


# --- reading ---------------------------------------------------------------------------------------


def get_database(database_id: int) -> RetroDatabase:
    """A database by id, whatever its status (a checkpoint names the one it was trained with)."""
    with get_engine().connect() as conn:
        row = store.retro_database(conn, database_id)
    if row is None:
        raise NotIndexed(f"there is no retrieval database {database_id}; build one with build_database")
    return _database(row)


def latest_database(
    repo: str, *, tokenizer: str | None = None, chunk_tokens: int | None = None, encoder: str | None = None
) -> RetroDatabase:
    """The repository's newest ready database, of one tokenizer (its directory), chunk length m and encoder if named."""
    if tokenizer is not None:
        tokenizer = str(Path(tokenizer).expanduser().resolve())  # as load_tokenizer and save record it
    with get_engine().connect() as conn:
        row = store.latest_retro_database(
            conn, store.repo_id(conn, repo), tokenizer=tokenizer, chunk_tokens=chunk_tokens, encoder=encoder
        )
    if row is None:
        which = (f" with tokenizer {tokenizer}" if tokenizer else "") + (
            f" and m={chunk_tokens}" if chunk_tokens else ""
        )
        raise NotIndexed(f"repository {repo!r} has no ready retrieval database{which}; build one with build_database")
    return _database(row)


def paths_gone(db: RetroDatabase) -> list[str]:
    """The database's paths that its repository's current snapshot no longer holds: never served."""
    with get_engine().connect() as conn:
        return store.retro_paths_gone(conn, db.id, store.repo_id(conn, db.repo))


def database_chunks(db: RetroDatabase, *, split: str | None = None) -> list[RetroChunk]:
    """The database's chunks, of one split if named, in (path, ordinal) order."""
    if split not in (None, "train", "heldout"):
        raise ValueError(f"split must be train or heldout, not {split!r}")
    with get_engine().connect() as conn:
        rows = store.retro_chunks(conn, db.id, split=split)
    return [RetroChunk(cid, path, sp, o, tuple(tokens), text, s, e) for cid, path, sp, o, tokens, text, s, e in rows]


# --- neighbours ------------------------------------------------------------------------------------


def neighbours(db: RetroDatabase, *, config: RetroDbConfig, embedder: Embedder | None = None) -> dict[int, list[int]]:
    """For every chunk, train or held-out, the ids of its k nearest train chunks of other files, nearest first.

    Cached under the configuration's key. With the database's encoder (config.encoder None means it)
    the search goes through the database's HNSW index; another encoder re-embeds every chunk and
    searches exactly.
    """
    if config.chunk_tokens != db.chunk_tokens:
        raise ValueError(
            f"database {db.id} has {db.chunk_tokens}-token chunks, the configuration {config.chunk_tokens}"
        )
    if config.encoder is None:
        config = replace(config, encoder=embedder.name if embedder is not None else db.encoder)
    elif embedder is not None and embedder.name != config.encoder:
        raise ValueError(f"the embedder is {embedder.name!r} but the configuration names {config.encoder!r}")
    engine = get_engine()
    with engine.connect() as conn:
        # Keyed by what the database holds too: a follow that changes it makes older entries unreadable,
        # even ones a trainer still writes after the follow dropped the rest.
        held = (store.retro_database(conn, db.id) or {}).get("stats", {}).get("fingerprint", "")
        key, k = f"{config.key()}-{held[:12]}", config.neighbours
        ids = store.retro_chunk_ids(conn, db.id)
        found = store.cached_retro_neighbours(conn, db.id, config_key=key)
    missing = [cid for cid in ids if cid not in found]
    if missing:
        log.info("finding %d neighbours of %d chunks of database %d", k, len(missing), db.id)
    if missing and config.retriever == "bm25":
        chunks = database_chunks(db)
        index, pool = _bm25(db, chunks, train_only=True)
        paths = {p: i for i, p in enumerate(sorted({c.path for c in chunks}))}
        todo = set(missing)
        wanted = [c for c in chunks if c.id in todo]
        hits = index.search(
            [c.tokens for c in wanted],
            k=k,
            groups=[paths[c.path] for c in pool],
            query_groups=[paths[c.path] for c in wanted],
        )
        computed = {c.id: [pool[i].id for i in row] for c, row in zip(wanted, hits)}
        with engine.begin() as conn:
            store.write_retro_neighbours(conn, db.id, config_key=key, neighbours=computed)
        found.update(computed)
    elif missing and config.encoder == db.encoder:
        for lo in range(0, len(missing), NEIGHBOUR_BATCH):
            with engine.begin() as conn:
                batch = store.retro_neighbours_of(
                    conn, db.id, dim=db.dim, chunk_ids=missing[lo : lo + NEIGHBOUR_BATCH], k=k
                )
                store.write_retro_neighbours(conn, db.id, config_key=key, neighbours=batch)
            found.update(batch)
    elif missing:
        chunks = database_chunks(db)
        vectors = (embedder or load_embedder(config.encoder)).embed([c.text for c in chunks])
        rows = exact_neighbours(vectors, [c.path for c in chunks], [c.split == "train" for c in chunks], k=k)
        wanted = set(missing)
        computed = {c.id: [chunks[i].id for i in row] for c, row in zip(chunks, rows) if c.id in wanted}
        with engine.begin() as conn:
            store.write_retro_neighbours(conn, db.id, config_key=key, neighbours=computed)
        found.update(computed)
    return {cid: found[cid] for cid in ids}


def neighbour_tokens(db: RetroDatabase, ids: Sequence[int]) -> list[Neighbour]:
    """The chunks `ids` of the database, in that order, each followed by its continuation."""
    with get_engine().connect() as conn:
        rows = store.retro_chunks_with_continuation(conn, db.id, ids)
    absent = [cid for cid in ids if cid not in rows]
    if absent:
        raise ValueError(f"chunks {absent[:5]} are not in retrieval database {db.id}")
    out = []
    for cid in ids:
        path, start, end, tokens, text = rows[cid]
        out.append(Neighbour(cid, path, start, end, db.commit, tuple(tokens), text, 0.0))
    return out


def retrieve(
    db: RetroDatabase,
    text: str,
    *,
    k: int,
    exclude_paths: Sequence[str] = (),
    embedder: Embedder | None = None,
    train_only: bool = True,
    retriever: str = "dense",
    tokens: Sequence[int] = (),
) -> list[Neighbour]:
    """The k chunks nearest `text` (with continuations), outside `exclude_paths`: retrieval while generating.

    Train chunks only, as training saw them, unless `train_only` is false (serving: the split is a
    training-time notion). With `retriever="bm25"` the query is `tokens` (the chunk's LM tokens), not `text`."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if retriever not in RETRIEVERS:
        raise ValueError(f"retriever must be one of {', '.join(RETRIEVERS)}, not {retriever!r}")
    if retriever == "bm25":
        if not tokens:
            raise ValueError("BM25 retrieval needs the chunk's LM tokens (tokens=...)")
        return _retrieve_bm25(db, tokens, k=k, exclude_paths=exclude_paths, train_only=train_only)
    embedder = embedder or load_embedder(db.encoder)
    if embedder.name != db.encoder:
        raise ValueError(f"database {db.id} was embedded with {db.encoder!r}, not {embedder.name!r}")
    vector = embedder.embed([text])[0]
    with get_engine().begin() as conn:
        hits = store.nearest_retro_chunks(
            conn, db.id, dim=db.dim, vector=vector, k=k, exclude_paths=exclude_paths, train_only=train_only
        )
    found = neighbour_tokens(db, [cid for cid, _ in hits])
    return [replace(n, score=score) for n, (_, score) in zip(found, hits)]


_BM25_CACHE: OrderedDict[tuple, tuple] = OrderedDict()  # (database, what it holds, train only) -> (index, chunks)
_BM25_CACHED = 4  # databases kept per process, least recently used first out
_BM25_LOCK = threading.Lock()


def _bm25(db: RetroDatabase, chunks: Sequence[RetroChunk] | None = None, *, train_only: bool):
    """A BM25 index over the database's chunks (train ones only if asked), kept for this process while the
    database holds the same files (a follow of a new snapshot changes its fingerprint)."""
    from grounding.index.token_bm25 import TokenBM25

    with get_engine().connect() as conn:
        stats = (store.retro_database(conn, db.id) or {}).get("stats", {})
    # A follow re-cuts changed files under new chunk ids, even when a revert brings the fingerprint back: the
    # snapshot it followed is part of the key.
    key = (db.id, stats.get("fingerprint", ""), (stats.get("followed") or {}).get("snapshot"), train_only)
    with _BM25_LOCK:
        cached = _BM25_CACHE.get(key)
        if cached is not None:
            _BM25_CACHE.move_to_end(key)
            return cached
    chunks = chunks if chunks is not None else database_chunks(db)
    pool = [c for c in chunks if c.split == "train" or not train_only]
    if not pool:
        raise NotIndexed(f"retrieval database {db.id} has no chunk to search")
    vocab = 1 + max((max(c.tokens, default=0) for c in pool), default=0)
    cached = (TokenBM25([c.tokens for c in pool], vocab_size=vocab, bigrams=True), pool)
    with _BM25_LOCK:
        for old in [k for k in _BM25_CACHE if k[0] == db.id and k[3] == train_only]:
            del _BM25_CACHE[old]  # what this database held before
        _BM25_CACHE[key] = cached
        while len(_BM25_CACHE) > _BM25_CACHED:
            _BM25_CACHE.popitem(last=False)
    return cached


def _retrieve_bm25(
    db: RetroDatabase, tokens: Sequence[int], *, k: int, exclude_paths: Sequence[str], train_only: bool
) -> list[Neighbour]:
    index, pool = _bm25(db, train_only=train_only)
    excluded = set(exclude_paths)
    groups = [1 if c.path in excluded else 0 for c in pool]
    hits = index.search([list(tokens)], k=k, groups=groups, query_groups=[1])[0]  # group 1: never returned
    found = neighbour_tokens(db, [pool[i].id for i in hits])
    return [replace(n, score=float(len(hits) - j)) for j, n in enumerate(found)]  # rank, not a comparable score
