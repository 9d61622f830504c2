"""The frozen records that travel between stages: source files, chunks, hits, citations, answers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

# Raised whenever what ingest derives from a file's bytes changes (chunking, secret redaction): a file
# indexed by an older grounding is then processed again on the next ingest although its bytes did not
# change, and chunks whose text is unchanged keep their embeddings. 2: secrets redacted before chunking.
# 3: JavaScript/TypeScript functions assigned to a property (`res.send = function () {}`) are definitions.
# 4: ... also through a subscript (`proto['delete'] =`) or a chain (`exports = module.exports = function`),
# and a class assigned to a property (`exports.Route = class {}`) owns its methods.
# 5: more secret shapes redacted (secrets.RULES_VERSION 2): a `*_pass` name, HTTP Basic credentials, Azure
# AccountKey/SharedAccessKey, a secret-named setting's getenv/get fallback.
INDEXING_VERSION = 5


def content_hash(data: bytes) -> str:
    """The hash that identifies a file's or a chunk's content (sha256, hex)."""
    return hashlib.sha256(data).hexdigest()


SPLITS = ("train", "heldout")
HELDOUT_PERCENT = 20


def split_of(path: str) -> str:
    """`heldout` for about HELDOUT_PERCENT of paths, `train` for the rest; the same on every machine.

    By file, so no file is both trained on and held out: evaluation splits its questions by it, and RETRO
    trains and evaluates with neighbours from train files only (a completion reads every file).
    """
    bucket = int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:8], "big") % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


@dataclass(frozen=True)
class SourceFile:
    """One file read from a repository, before chunking."""

    path: str  # POSIX path relative to the repository root
    data: bytes
    language: str
    decode_errors: bool = False  # not valid UTF-8: decoded with replacement characters

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def role(self) -> str:
        """What the file is for (grounding.roles): its path's conventions, then its head's generated-code marker."""
        from grounding.roles import SNIFF_BYTES, classify

        return classify(self.path, self.language, self.data[:SNIFF_BYTES])

    @property
    def content_hash(self) -> str:
        return content_hash(self.data)

    @property
    def index_hash(self) -> str:
        """The content hash under INDEXING_VERSION: a stored file with the same path and index hash is unchanged."""
        return content_hash(f"grounding-indexing-v{INDEXING_VERSION}\0".encode() + self.data)


@dataclass(frozen=True)
class SkippedFile:
    """A file the ingest did not index, and why (binary, too-large, minified, ...)."""

    path: str
    reason: str


@dataclass(frozen=True)
class Chunk:
    """A syntax-aware span of one file: what is embedded, searched and cited."""

    path: str
    language: str
    kind: str  # function, method, class, section, block, lines, ...
    symbol: str | None  # qualified name of the definition it holds ("Session.request"), if any
    context: str  # enclosing path and signatures, prepended for embedding only
    start_byte: int
    end_byte: int
    start_line: int  # 1-based, inclusive
    end_line: int  # 1-based, inclusive
    text: str  # the original lines, byte-exact for UTF-8 input
    token_count: int

    @property
    def embed_text(self) -> str:
        """What the encoder sees: the enclosing context, then the code."""
        return f"{self.context}\n{self.text}" if self.context else self.text

    @property
    def content_hash(self) -> str:
        return content_hash(self.embed_text.encode("utf-8"))


@dataclass(frozen=True)
class Citation:
    """Where a piece of evidence lives: path, lines and the commit it was read at."""

    repo: str
    path: str
    start_line: int
    end_line: int
    commit: str | None
    score: float
    snippet: str
    symbol: str | None = None
    kind: str | None = None
    language: str | None = None
    role: str | None = None  # what the file is for (grounding.roles): source, test, docs, ...

    @property
    def location(self) -> str:
        at = f"@{self.commit[:12]}" if self.commit else ""
        return f"{self.path}:{self.start_line}-{self.end_line}{at}"

    @property
    def role_tag(self) -> str:
        """` (test)`, ` (docs)`, ...: the file's role when it is not implementation; empty for source."""
        return f" ({self.role})" if self.role and self.role != "source" else ""


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk with its fused score and the ranks that produced it."""

    chunk_id: int
    citation: Citation
    score: float
    vector_rank: int | None = None
    lexical_rank: int | None = None
    trigram_rank: int | None = None
    index_version: int | None = None  # the version whose vectors ranked it (one per answer)


@dataclass(frozen=True)
class Answer:
    """What `ask` returns: the answer text and the citations it rests on ([n] in the text is citations[n - 1])."""

    question: str
    text: str
    citations: tuple[Citation, ...] = field(default_factory=tuple)
    backend: str = "extractive"  # the generator that wrote the text
    repos: tuple[str, ...] = ()  # the repositories asked


@dataclass(frozen=True)
class IndexVersion:
    """A set of embeddings of one repository's chunks, made by one encoder."""

    id: int
    repo_id: int
    encoder: str
    dim: int
    status: str  # building, active, candidate, shadow, retired, failed
    query_encoder: str | None = None  # a trained query tower; None: questions use `encoder` too
    fusion_weights: str | None = None  # chosen on this version's validation questions (grounding.evaluation.tuning)

    @property
    def question_encoder(self) -> str:
        """The encoder that turns a question into a vector for this version."""
        return self.query_encoder or self.encoder


@dataclass(frozen=True)
class RepoInfo:
    """An ingested repository as `grounding repos` shows it."""

    id: int
    name: str
    source: str
    snapshot_id: int | None
    commit: str | None
    finished_at: object | None  # datetime of the current snapshot
    files: int
    chunks: int
    index_version: int | None
    encoder: str | None
    last_status: str | None  # of the most recent snapshot, which may have failed
    last_error: str | None


@dataclass(frozen=True)
class IngestReport:
    """What one ingest did: counts per outcome, skipped files with reasons, seconds per stage."""

    repo: str
    snapshot_id: int
    commit: str | None
    files_seen: int
    files_changed: int
    files_unchanged: int
    files_deleted: int
    chunks_added: int
    chunks_removed: int
    chunks_unchanged: int
    embeddings_computed: int
    embeddings_reused: int
    skipped: tuple[SkippedFile, ...]
    non_utf8: tuple[str, ...]
    seconds: dict[str, float] = field(default_factory=dict)
    secrets_redacted: int = 0  # secrets replaced by [REDACTED:<kind>] in the files this run chunked

    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.skipped:
            counts[s.reason] = counts.get(s.reason, 0) + 1
        return counts
