"""The HTTP API's request and response models (pydantic): what /docs shows and every request is checked against.

Limits here are the first line only; the library validates every argument again (grounding.validation).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from grounding.search.filters import SearchFilters

Name = Field(min_length=1, max_length=200)
Pattern = Annotated[str, Field(min_length=1, max_length=500)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class FiltersIn(_In):
    """Which chunks may come back: globs for paths, names for languages, kinds and roles (grounding.roles)."""

    paths: list[Pattern] = Field(default_factory=list, max_length=50)
    exclude_paths: list[Pattern] = Field(default_factory=list, max_length=50)
    languages: list[Pattern] = Field(default_factory=list, max_length=50)
    kinds: list[Pattern] = Field(default_factory=list, max_length=50)
    roles: list[Pattern] = Field(default_factory=list, max_length=50)


class _Filtered(_In):
    filters: FiltersIn | None = None

    def search_filters(self) -> SearchFilters | None:
        return None if self.filters is None else SearchFilters(**self.filters.model_dump())


class SearchIn(_Filtered):
    repo: str = Name
    query: str = Field(min_length=1, max_length=4000)
    k: int = Field(8, ge=1, le=100)
    mode: Literal["hybrid", "vector", "lexical"] = "hybrid"
    rerank: bool | None = None  # None: the repository's promoted reranker, if any


class AskIn(_Filtered):
    repo: str | None = Field(None, min_length=1, max_length=200)
    repos: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(None, min_length=1, max_length=20)
    question: str = Field(min_length=1, max_length=4000)
    k: int = Field(5, ge=1, le=50)
    stream: bool = False

    @model_validator(mode="after")
    def _one_of(self):
        if (self.repo is None) == (self.repos is None):
            raise ValueError("give `repo` or `repos`, not both and not neither")
        return self

    def repo_names(self) -> list[str]:
        return [self.repo] if self.repo is not None else list(self.repos)


class CompleteIn(_In):
    repo: str = Name
    prefix: str = Field(max_length=200_000)
    path: str | None = Field(None, max_length=1000)  # the prefix's own file: never retrieved from
    max_new_tokens: int = Field(64, ge=1, le=1024)
    temperature: float = Field(0.0, ge=0, le=10)
    seed: int = Field(0, ge=0, le=2**31 - 1)


class IngestIn(_In):
    source: str | None = Field(None, min_length=1, max_length=2000)  # None: where the repository is registered
    ref: str | None = Field(None, min_length=1, max_length=250)
    replace_source: bool = False


class GrantIn(_In):
    principal: str = Field(min_length=1, max_length=140)  # user:NAME, group:NAME or a bare user name


class CitationOut(BaseModel):
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
    role: str | None = None
    cite: str  # path:start-end@commit


class HitOut(BaseModel):
    chunk_id: int
    score: float
    index_version: int | None
    citation: CitationOut


class SearchOut(BaseModel):
    repo: str
    hits: list[HitOut]


class AnswerOut(BaseModel):
    question: str
    text: str  # [n] cites citations[n - 1]
    backend: str
    repos: list[str]
    citations: list[CitationOut]


class CompletionOut(BaseModel):
    repo: str
    text: str
    tokens: int
    seconds: float
    neighbours: list[CitationOut]  # what the model read while writing


class MeOut(BaseModel):
    user: str
    admin: bool
    via: str
    token_id: str | None
    expires_at: dt.datetime | None


class RepoOut(BaseModel):
    name: str
    commit: str | None
    snapshot_id: int | None
    indexed_at: dt.datetime | None
    files: int
    chunks: int
    index_version: int | None
    encoder: str | None
    last_status: str | None
    derived_from: str | None


class RepoPage(BaseModel):
    items: list[RepoOut]
    next_cursor: str | None  # pass it as `cursor` for the next page; None on the last


class SnapshotOut(BaseModel):
    id: int
    status: str
    commit: str | None
    ref: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None
    error: str | None
    stats: dict


class IndexVersionOut(BaseModel):
    id: int
    status: str
    encoder: str
    query_encoder: str | None
    dim: int
    vectors: int
    created_at: dt.datetime
    activated_at: dt.datetime | None


class RepoDetail(RepoOut):
    snapshots: list[SnapshotOut]
    index_versions: list[IndexVersionOut]


class ChunkOut(BaseModel):
    id: int
    repo: str
    path: str
    start_line: int
    end_line: int
    text: str
    symbol: str | None
    kind: str
    language: str
    role: str
    commit: str | None
    cite: str


class IngestJobOut(BaseModel):
    job: str
    repo: str
    mode: str  # deployment (a Prefect worker runs it) or direct (this server does)
    status: str  # starting, running, complete, failed
    stage: str
    flow_run_id: str | None
    snapshot_id: int | None
    error: str | None


class RemovalOut(BaseModel):
    repo: str
    removed: list[str]  # the repository, then the eval indexes derived from it
    files: int
    chunks: int
    training_runs: int
    directories_deleted: int  # under GROUNDING_HOME (server paths are not shown)
    directories_kept: int  # used by another repository, or not removable: `grounding delete` names them


class GrantOut(BaseModel):
    principal: str
    repo: str


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def repo_out(r) -> RepoOut:
    """A RepoStatus as the API shows it; its source (a server path or a URL with credentials) is an admin's."""
    return RepoOut(
        name=r.name,
        commit=r.commit,
        snapshot_id=r.snapshot_id,
        indexed_at=r.snapshot_finished_at,
        files=r.files,
        chunks=r.chunks,
        index_version=r.index_version,
        encoder=_name(r.encoder) if r.encoder else None,
        last_status=r.last_status,
        derived_from=r.derived_from,
    )


def snapshot_out(s, *, error: bool) -> SnapshotOut:
    """A snapshot as the API shows it; a failure's text (which may name server paths) only with `error`."""
    return SnapshotOut(
        id=s.id,
        status=s.status,
        commit=s.commit,
        ref=s.ref,
        started_at=s.started_at,
        finished_at=s.finished_at,
        error=s.error if error or s.error is None else "the ingest failed; an administrator can read why",
        stats=s.stats,
    )


def version_out(v) -> IndexVersionOut:
    return IndexVersionOut(
        id=v.id,
        status=v.status,
        encoder=_name(v.encoder),
        query_encoder=_name(v.query_encoder) if v.query_encoder else None,
        dim=v.dim,
        vectors=v.vectors,
        created_at=v.created_at,
        activated_at=v.activated_at,
    )


def job_out(j) -> IngestJobOut:
    return IngestJobOut(
        job=j.key,
        repo=j.name,
        mode=j.mode,
        status=j.status,
        stage=j.stage,
        flow_run_id=j.flow_run_id,
        snapshot_id=j.snapshot.id if j.snapshot else None,
        error=j.error,
    )
