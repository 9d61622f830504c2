"""complete(repo, prefix): code completion by the repository's trained RETRO model, citing what it read.

Decoding keeps a KV cache. Each time a chunk of m tokens completes (in the prompt or in the
generated text), its text is embedded and its k neighbours are retrieved from the live retrieval
database, before the chunk's last token is fed: from that token on, the model attends to them.
Every neighbour used is returned as a citation (path, lines, commit).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from grounding import db, store, validation
from grounding.errors import InvalidArgument, NotIndexed
from grounding.records import Citation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    repo: str
    prefix: str
    text: str  # the generated continuation
    citations: tuple[Citation, ...]  # the neighbours the model read, first retrieved first, without repeats
    tokens: int  # generated
    seconds: float
    checkpoint: str
    database: int | None = None  # the retrieval database the neighbours came from

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def prefix_at(repo: str, path: str, line: int | None, *, user: str | None = None) -> str:
    """The text of `path` as the current snapshot indexed it, redacted, up to and including `line` (all if None).

    Only a file the snapshot holds is read, and only while its bytes on disk are still the bytes that
    were indexed (the stored content hash): a file ingest skipped (`.env`, untracked, ignored, `.git/*`)
    or one changed since is never read back, by any path.
    """
    from grounding.access import authorize
    from grounding.config import get_settings
    from grounding.errors import SourceNotFound, SourceUnreachable
    from grounding.index import sources
    from grounding.index.secrets import redact_bytes
    from grounding.records import SourceFile

    repo = validation.repo_name(repo, derived_ok=True)
    authorize(user, [repo])
    path = validation.repo_path(path)
    if line is not None:
        line = validation.count(line, "line", maximum=10_000_000)
    with db.get_engine().connect() as conn:
        repo_id = store.repo_id(conn, repo)
        source, ref, commit = store.repo_source(conn, repo)
        indexed = store.visible_file(conn, repo_id, path)
    if indexed is None:
        raise SourceNotFound(
            f"{path!r} is not a file that repository {repo!r} indexed; give a path `grounding ask` cites"
        )
    stored_hash, _ = indexed
    settings = get_settings()
    root = (
        settings.checkouts_dir / sources.checkout_key(repo_id) if sources.is_git_url(source) else Path(source)
    ).resolve()
    if sources.is_git_url(source) and not (root / ".git").is_dir():  # this host's home has no clone yet
        try:
            with store.repo_lock(db.get_engine(), repo, wait=False):  # never beside an ingest's own clone
                sources.reopen(
                    source, checkouts=settings.checkouts_dir, name=sources.checkout_key(repo_id), commit=commit, ref=ref
                )
        except (SourceNotFound, SourceUnreachable) as err:
            if user is None:  # a trusted caller (the CLI, a flow) may read where the source is and what git said
                raise
            # A reader is not told the repository's source URL, this server's paths, or git's reply: the log is.
            log.warning("the checkout of %r could not be made for a read: %s", repo, err)
            raise SourceNotFound(
                f"the files of repository {repo!r} could not be fetched onto this server; try again later, or "
                "re-ingest it"
            ) from None
    found = sources.read_file(root, path, max_bytes=settings.max_file_bytes, max_line_length=settings.max_line_length)
    data = found.data if isinstance(found, SourceFile) else None  # no link followed, nothing larger than ingest reads
    if data is None or found.index_hash != stored_hash:
        raise SourceNotFound(
            f"{path} changed on disk since repository {repo!r} was indexed; run `grounding refresh {repo}` first"
        )
    # The prompt is the file as ingest saw it: a secret in it is neither sent to the model nor echoed back.
    lines = redact_bytes(data)[0].decode("utf-8", errors="replace").splitlines(keepends=True)
    if line is not None and line > len(lines):
        raise SourceNotFound(f"{path} has {len(lines)} lines; line {line} is outside it")
    return "".join(lines[: line if line is not None else len(lines)])


def latest_checkpoint(repo: str) -> str:
    """The RETRO checkpoint of the repository's last complete `train-retro` run."""
    with db.get_engine().connect() as conn:
        runs = store.training_runs(conn, store.repo_id(conn, repo), kind="retro", limit=None)
    for run in runs:
        if run["status"] == "complete" and run["checkpoint"] and Path(run["checkpoint"]).is_file():
            return run["checkpoint"]
    raise NotIndexed(f"repository {repo!r} has no trained RETRO model; run `grounding train-retro {repo}` first")


def _neighbour_tensor(found: list, k: int, r: int, pad: int):
    import torch

    out = torch.full((1, k, r), pad, dtype=torch.long)
    for j, nb in enumerate(found[:k]):
        tokens = list(nb.tokens)[:r]
        out[0, j, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return out


OWN_FILE_MIN_CHARS = 32  # a chunk shorter than this ("}\n", a blank run) is in most prompts: no evidence


def _copied(neighbour, m: int, tokenizer, text: str) -> bool:
    """Whether the neighbour's own chunk (m tokens, no end of file) appears verbatim in the prompt's text."""
    tokens = list(neighbour.tokens[:m])
    if len(tokens) < m or tokenizer.eos_id in tokens:
        return False
    chunk = tokenizer.decode(tokens)
    return len(chunk.strip()) >= OWN_FILE_MIN_CHARS and chunk in text


def complete(
    repo: str,
    prefix: str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    path: str | None = None,
    checkpoint: str | None = None,
    device: str | None = None,
    seed: int = 0,
    user: str | None = None,
    own_file: bool = False,
) -> Completion:
    """Continue `prefix` with the repository's RETRO model; `path` (the prefix's own file) is never retrieved,
    unless `own_file`: then its indexed version is read too, as an editor's buffer would read the file as it was
    at the last ingest (where the time split measures RETRO's gain; see the README).

    Without `path`, a file of the database that holds one of the prompt's retrieved chunks verbatim is
    taken to be the file being completed and is not retrieved either (its continuation is the answer).
    The prompt keeps the end of `prefix`, at least half the model's context; generation stops at
    `max_new_tokens` or the context's end. `user`, when given, must be granted `repo`: the neighbours
    are the repository's code.
    """
    import torch

    from grounding.access import authorize

    repo = validation.repo_name(repo, derived_ok=True)
    authorize(user, [repo])
    if validation.user(user) is not None and (checkpoint is not None or device is not None):
        # A path would let a user load any file on the server as a model (or another repository's model).
        raise InvalidArgument(
            "checkpoint and device are for trusted callers; a user completes with the repository's own model"
        )
    if not isinstance(prefix, str):
        raise InvalidArgument(f"prefix must be a string (the code before the cursor), not {type(prefix).__name__}")
    max_new_tokens = validation.count(max_new_tokens, "max_new_tokens", maximum=4096)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 10:
        raise InvalidArgument(f"temperature must be a number from 0 (greedy) to 10, not {temperature!r}")
    if path is not None:
        path = validation.repo_path(path)
    if not isinstance(own_file, bool):
        raise InvalidArgument(f"own_file must be True or False, not {own_file!r}")
    if own_file and path is None:
        raise InvalidArgument("own_file reads the indexed version of `path`: give the path being completed")

    with torch.inference_mode():
        return _complete(repo, prefix, max_new_tokens, temperature, path, checkpoint, device, seed, own_file)


def _complete(repo, prefix, max_new_tokens, temperature, path, checkpoint, device, seed, own_file) -> Completion:
    import torch

    from grounding.index import retro_db
    from grounding.index.lm_tokenizer import load_tokenizer
    from grounding.models.checkpoint import default_device, load_retro
    from grounding.models.retro import RetroCache

    device = device or default_device()
    checkpoint = checkpoint or latest_checkpoint(repo)
    model, state = load_retro(checkpoint, device=device)
    tokenizer = load_tokenizer(state["tokenizer"])
    cfg = model.config
    m, k, r = cfg.chunk_len, cfg.neighbours, cfg.retrieval_len
    # Neighbours of the m (and encoder) the model was trained on: a database cut otherwise would misalign
    # every chunk.
    try:
        trained_encoder = retro_db.get_database(int(state["database"])).encoder
    except Exception:  # noqa: BLE001 - the trained-with database may be collected: any of its m will do
        trained_encoder = None
    database = retro_db.latest_database(repo, tokenizer=state["tokenizer"], chunk_tokens=m, encoder=trained_encoder)
    retrieval = bool(cfg.cca_layers)
    keep = cfg.max_seq_len - min(max_new_tokens, cfg.max_seq_len // 2)
    ids = tokenizer.encode(prefix)[-keep:] if prefix else []
    if not ids:
        ids = [tokenizer.eos_id]  # a file's start: the model was trained with files after an eos
    cache = RetroCache()
    citations: dict[tuple, Citation] = {}
    generator = torch.Generator().manual_seed(seed)
    # Never the file being completed, nor a file the current snapshot no longer holds (deleted since the
    # database was built: perhaps for what it held).
    excluded = ([path] if path and not own_file else []) + retro_db.paths_gone(database)

    retriever = (state.get("extra") or {}).get("retriever", "dense")  # as the model was trained

    def neighbours_of(u: int, tokens: list[int]) -> list:
        chunk = tokens[u * m : (u + 1) * m]
        return retro_db.retrieve(
            database,
            tokenizer.decode(chunk),
            k=k,
            exclude_paths=excluded,
            train_only=False,  # every file
            retriever=retriever,
            tokens=chunk,
        )

    def use(u: int, found: list) -> None:
        read = (
            retro_db.align(database, ids[u * m : (u + 1) * m], found, r=r, pad=tokenizer.pad_id)
            if cfg.aligned
            else found
        )
        cache.neighbours[u] = _neighbour_tensor(read, k, r, tokenizer.pad_id).to(device)
        for nb in found:
            key = (nb.path, nb.start_line, nb.end_line)
            citations.setdefault(key, Citation(repo, nb.path, nb.start_line, nb.end_line, nb.commit, nb.score, nb.text))

    started = time.perf_counter()
    if retrieval:
        prompt = {u: neighbours_of(u, ids) for u in range(len(ids) // m)}
        if path is None:
            text = tokenizer.decode(ids)
            own = sorted({nb.path for found in prompt.values() for nb in found if _copied(nb, m, tokenizer, text)})
            if own:
                excluded.extend(own)
                prompt = {u: neighbours_of(u, ids) for u in prompt}
        for u, found in prompt.items():
            use(u, found)
    logits = model(torch.tensor([ids], device=device), cache=cache)[:, -1]
    generated: list[int] = []
    for _ in range(max_new_tokens):
        if temperature > 0:
            probs = torch.softmax(logits.float() / temperature, -1).cpu()
            token = int(torch.multinomial(probs, 1, generator=generator))
        else:
            token = int(logits.argmax(-1))
        if token == tokenizer.eos_id or cache.pos >= cfg.max_seq_len:
            break
        generated.append(token)
        ids.append(token)
        position = len(ids) - 1
        if retrieval and position % m == m - 1:  # this token completes chunk u: read its neighbours first
            use(position // m, neighbours_of(position // m, ids))
        logits = model(torch.tensor([[token]], device=device), cache=cache)[:, -1]
    seconds = time.perf_counter() - started
    return Completion(
        repo,
        prefix,
        tokenizer.decode(generated),
        tuple(citations.values()),
        len(generated),
        seconds,
        checkpoint,
        database.id,
    )
