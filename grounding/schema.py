"""The tables: repositories, snapshots, files, chunks, index versions and their embeddings.

Visibility is by snapshot: a file row is written by the snapshot that first saw its content and is
visible once the repository's `current_snapshot_id` has reached it. Finishing an ingest deletes the
superseded rows and moves the pointer in one transaction, so readers see either the old snapshot or
the new one, never a mix. Embeddings carry their index version; each version gets its own partial
HNSW index (built by `store.build_vector_index`), so a new encoder can be built beside the active one.
Evaluation runs record how well a question set was answered, by which index version and encoder;
training runs record how a retriever was trained, step by step, and what the promotion gate decided.
A RETRO retrieval database holds a repository's files cut into fixed-length chunks of LM tokens,
each with its encoder vector; its train chunks get their own partial HNSW index (built by
`store.build_retro_index`), and the neighbours found for each chunk are cached per configuration.
A sharded ingest keeps its plan (each shard's files and index version) and each write batch's counts.
Every repository delete leaves a row (by a hash of the name), so that an ingest queued before it does not
register the repository again.
Access is granted per repository to principals, `user:NAME` or `group:NAME`; group members are users.
"""

from __future__ import annotations

from pgvector.sqlalchemy import HALFVEC, Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

metadata = MetaData()

repositories = Table(
    "repositories",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("source", Text, nullable=False),  # the path or git URL it was ingested from
    Column("ref", Text),
    Column("current_snapshot_id", Integer),  # the last complete snapshot: what queries see
    # Set on an eval index grounding derived from another repository: it is read under that one's grants.
    Column("derived_from", Integer, ForeignKey("repositories.id", ondelete="CASCADE")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # BM25's corpus statistics over the visible chunks, kept by store.finish_snapshot.
    Column("bm25_docs", BigInteger, nullable=False, server_default=text("0")),
    Column("bm25_length", BigInteger, nullable=False, server_default=text("0")),
    Index("repositories_derived_from", "derived_from"),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("repo_id", Integer, ForeignKey("repositories.id", ondelete="CASCADE"), nullable=False),
    Column("commit", Text),
    Column("ref", Text),
    Column("status", Text, nullable=False),  # running, complete, failed
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
    Column("stats", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("error", Text),
    Index("snapshots_repo", "repo_id", "id"),
)

# One row per repository deleted (grounding.index.remove), named by the SHA-256 of its name, not the name. An
# ingest queued or planned earlier (a job of the API or the copilot, a refresh's fan-out run) saw the sequence's
# last value then; a row of its name past that value means the repository was deleted since, and the ingest
# does not register it again (grounding.index.ingest). Sequence values are drawn at the delete, before its
# commit, and never go back, so a delete that commits after the ingest was queued is always seen.
repo_deletions = Table(
    "repo_deletions",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("name_sha256", Text, nullable=False),
    Column("deleted_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("repo_deletions_name", "name_sha256", "id"),
)

# The plan of a sharded ingest (grounding.index.shards): written under the repository's lock by the ingest,
# read by its shards, which are told only (snapshot, shard); each write batch appends its counts.
ingest_shards = Table(
    "ingest_shards",
    metadata,
    Column("snapshot_id", Integer, ForeignKey("snapshots.id", ondelete="CASCADE"), primary_key=True),
    Column("shard", Integer, primary_key=True),
    Column("index_version_id", Integer, ForeignKey("index_versions.id", ondelete="CASCADE"), nullable=False),
    Column("files", JSONB, nullable=False),  # [[path, content hash], ...] in listing order
    Column("batches", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
)

skipped_files = Table(
    "skipped_files",
    metadata,
    Column("snapshot_id", Integer, ForeignKey("snapshots.id", ondelete="CASCADE"), nullable=False),
    Column("path", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Index("skipped_files_snapshot", "snapshot_id"),
)

files = Table(
    "files",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("repo_id", Integer, ForeignKey("repositories.id", ondelete="CASCADE"), nullable=False),
    Column("snapshot_id", Integer, nullable=False),  # the snapshot that wrote this content
    Column("path", Text, nullable=False),
    Column("language", Text, nullable=False),
    Column("content_hash", Text, nullable=False),  # SourceFile.index_hash: the bytes under INDEXING_VERSION
    Column("size", Integer, nullable=False),
    Column("decode_errors", Boolean, nullable=False, server_default=text("false")),
    Column("role", Text, nullable=False, server_default=text("'source'")),  # grounding.roles.ROLES
    UniqueConstraint("repo_id", "path", "content_hash", name="files_repo_path_hash"),
)

chunks = Table(
    "chunks",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("file_id", BigInteger, ForeignKey("files.id", ondelete="CASCADE"), nullable=False),
    Column("repo_id", Integer, nullable=False),  # denormalised: every search filters on it
    Column("ordinal", Integer, nullable=False),  # position within the file
    Column("start_byte", Integer, nullable=False),
    Column("end_byte", Integer, nullable=False),
    Column("start_line", Integer, nullable=False),
    Column("end_line", Integer, nullable=False),
    Column("kind", Text, nullable=False),
    Column("symbol", Text),
    Column("context", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("token_count", Integer, nullable=False),
    Column("content_hash", Text, nullable=False),  # of context + text: equal hashes share an embedding
    Column("bm25_length", Integer, nullable=False, server_default=text("0")),  # tokens (grounding.lexical)
    Index("chunks_file", "file_id"),
    Index("chunks_repo_hash", "repo_id", "content_hash"),
    Index("chunks_content_hash", "content_hash"),  # equal chunks of other repositories share vectors
    Index(
        "chunks_symbol_trgm",
        "symbol",
        postgresql_using="gin",
        postgresql_ops={"symbol": "gin_trgm_ops"},
    ),
)

index_versions = Table(
    "index_versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("repo_id", Integer, ForeignKey("repositories.id", ondelete="CASCADE"), nullable=False),
    Column("encoder", Text, nullable=False),  # local path (or name) of the encoder that made the vectors
    Column("query_encoder", Text),  # encodes questions when it differs from `encoder` (a trained query tower)
    Column("dim", Integer, nullable=False),
    Column("status", Text, nullable=False),  # building, active, candidate, shadow, retired, failed
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("activated_at", DateTime(timezone=True)),
    Column("retired_at", DateTime(timezone=True)),
    Column("note", Text),
    Column("fusion", JSONB),  # weights chosen on this version's own validation questions (grounding.evaluation.tuning)
    Index(
        "index_versions_one_active",
        "repo_id",
        unique=True,
        postgresql_where=text("status = 'active'"),
    ),
)

# BM25 (grounding.lexical): one row per (term, chunk), with the chunk's length and its file's snapshot
# so that a search reads the postings alone; document frequencies over the visible chunks per term.
bm25_postings = Table(
    "bm25_postings",
    metadata,
    Column("repo_id", Integer, nullable=False),
    Column("term", Text, nullable=False),
    Column("chunk_id", BigInteger, ForeignKey("chunks.id", ondelete="CASCADE"), nullable=False),
    Column("snapshot_id", Integer, nullable=False),
    Column("tf", Integer, nullable=False),
    Column("dl", Integer, nullable=False),
    Index("bm25_postings_term", "repo_id", "term", postgresql_include=["chunk_id", "snapshot_id", "tf", "dl"]),
    Index("bm25_postings_chunk", "chunk_id"),
)

bm25_terms = Table(
    "bm25_terms",
    metadata,
    Column("repo_id", Integer, ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True),
    Column("term", Text, primary_key=True),
    Column("df", Integer, nullable=False),
)

embeddings = Table(
    "embeddings",
    metadata,
    Column("index_version_id", Integer, ForeignKey("index_versions.id", ondelete="CASCADE"), primary_key=True),
    Column("chunk_id", BigInteger, ForeignKey("chunks.id", ondelete="CASCADE"), primary_key=True),
    Column("embedding", HALFVEC(), nullable=False),  # dimension fixed per version by its HNSW index
    Index("embeddings_chunk", "chunk_id"),
)

eval_runs = Table(
    "eval_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("repo_id", Integer, ForeignKey("repositories.id", ondelete="CASCADE"), nullable=False),  # measured
    Column("dataset", Text, nullable=False),  # a harvester's name (docstrings) or the question file's path
    Column("split", Text, nullable=False),  # train, heldout or all
    Column("mode", Text, nullable=False),  # hybrid, vector or lexical
    Column("index_version_id", Integer),  # of the repository searched; not a key: versions are collected
    Column("encoder", Text),  # compares runs across repositories derived for evaluation
    Column("questions", Integer, nullable=False),
    Column("metrics", JSONB, nullable=False),  # recall@1, recall@5, recall@10, mrr@10
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("eval_runs_repo", "repo_id", "id"),
)

training_runs = Table(
    "training_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("repo_id", Integer, ForeignKey("repositories.id", ondelete="CASCADE"), nullable=False),
    Column("kind", Text, nullable=False),  # realm (pre-train, fine-tune, gate), retro
    Column("status", Text, nullable=False),  # running, complete, failed
    Column("config", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("device", Text),
    Column("host", Text),  # where the run's process runs: a run still `running` whose process is gone failed
    Column("pid", Integer),
    Column("heartbeat_at", DateTime(timezone=True)),  # the run's process writes now() every GROUNDING_RUN_HEARTBEAT_S
    Column("checkpoint", Text),  # directory of the checkpoint the run wrote
    Column("candidate_version_id", Integer),  # the index version the run built for the gate
    Column("decision", Text),  # promoted or retired
    Column("reason", Text),
    Column("metrics", JSONB, nullable=False, server_default=text("'{}'::jsonb")),  # held-out figures
    Column("error", Text),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
    Index("training_runs_repo", "repo_id", "id"),
)

training_metrics = Table(
    "training_metrics",
    metadata,
    Column("run_id", Integer, ForeignKey("training_runs.id", ondelete="CASCADE"), primary_key=True),
    Column("stage", Text, primary_key=True),  # ict, pretrain, finetune
    Column("step", Integer, primary_key=True),
    Column("metrics", JSONB, nullable=False),  # loss, staleness, index_version, mrr, ...
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

retro_databases = Table(
    "retro_databases",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("repo_id", Integer, ForeignKey("repositories.id", ondelete="CASCADE"), nullable=False),
    Column("snapshot_id", Integer),  # the repository's current snapshot when the files were read
    Column("commit", Text),  # of the checkout read; None outside git
    Column("tokenizer", Text, nullable=False),  # directory of the LM tokenizer that made the tokens
    Column("chunk_tokens", Integer, nullable=False),  # m: tokens per chunk
    Column("encoder", Text, nullable=False),  # the frozen encoder that made the vectors
    Column("dim", Integer, nullable=False),
    Column("status", Text, nullable=False),  # building, ready, retired, failed
    Column("stats", JSONB, nullable=False, server_default=text("'{}'::jsonb")),  # counts, content fingerprint
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("note", Text),
    Index("retro_databases_repo", "repo_id", "id"),
)

retro_chunks = Table(
    "retro_chunks",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("database_id", Integer, ForeignKey("retro_databases.id", ondelete="CASCADE"), nullable=False),
    Column("path", Text, nullable=False),
    Column("split", Text, nullable=False),  # train or heldout, by records.split_of(path)
    Column("ordinal", Integer, nullable=False),  # position within the file
    Column("tokens", ARRAY(Integer), nullable=False),  # chunk_tokens ids; a file's last chunk may be shorter
    Column("text", Text, nullable=False),  # the file's text the tokens spell (a split character: the first)
    Column("start_line", Integer, nullable=False),  # 1-based inclusive lines the text spans
    Column("end_line", Integer, nullable=False),
    Column("embedding", Vector(), nullable=False),  # dimension fixed per database by its HNSW index
    UniqueConstraint("database_id", "path", "ordinal", name="retro_chunks_database_path_ordinal"),
)

retro_neighbours = Table(
    "retro_neighbours",
    metadata,
    Column("database_id", Integer, ForeignKey("retro_databases.id", ondelete="CASCADE"), primary_key=True),
    Column("config_key", Text, primary_key=True),  # RetroDbConfig.key(): k, chunk length and encoder
    Column("chunk_id", BigInteger, primary_key=True),
    Column("neighbours", ARRAY(BigInteger), nullable=False),  # train chunk ids of other files, nearest first
)

group_members = Table(
    "group_members",
    metadata,
    Column("group_name", Text, primary_key=True),
    Column("user_name", Text, primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("group_members_user", "user_name"),
)

grants = Table(
    "grants",
    metadata,
    Column("principal", Text, primary_key=True),  # user:NAME or group:NAME
    Column("repo_id", Integer, ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("principal ~ '^(user|group):.+$'", name="grants_principal_kind"),
    Index("grants_repo", "repo_id"),
)

# API tokens (grounding.tokens): only a SHA-256 of each secret is kept; the token itself is shown once.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Text, primary_key=True),  # the public part of the token, shown by `grounding token list`
    Column("user_name", Text, nullable=False),
    Column("secret_hash", Text, nullable=False, unique=True),
    Column("admin", Boolean, nullable=False, server_default=text("false")),
    Column("label", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
    Index("api_tokens_user", "user_name"),
)
