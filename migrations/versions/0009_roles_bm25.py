"""File roles, a real BM25 in place of ts_rank, and fusion weights kept with each index version.

- `files.role`: source, test, docs, example, benchmark, config, generated or vendored (grounding.roles);
  existing rows are classified by their path alone (a file whose content changes is classified again,
  generated-code header included, when it is next ingested; an unchanged one keeps its path's role).
- `bm25_postings` (term, chunk, tf, the chunk's length, the file's snapshot), `bm25_terms` (document
  frequency over a repository's visible chunks) and `repositories.bm25_docs/bm25_length`: the
  statistics BM25 needs, kept by ingest as each snapshot becomes current. Existing chunks are tokenised
  here (grounding.lexical).
- `index_versions.fusion`: the fusion weights chosen for that version on its own validation questions.
- `chunks.search` (the tsvector ts_rank read) and its GIN index go: nothing ranks by them any more.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BATCH = 5000


def upgrade() -> None:
    from collections import Counter

    from grounding.lexical import chunk_tokens
    from grounding.roles import classify
    from grounding.store.catalog import REBUILD_BM25_STATS

    op.add_column("files", sa.Column("role", sa.Text, nullable=False, server_default="source"))
    op.add_column("chunks", sa.Column("bm25_length", sa.Integer, nullable=False, server_default="0"))
    op.add_column("repositories", sa.Column("bm25_docs", sa.BigInteger, nullable=False, server_default="0"))
    op.add_column("repositories", sa.Column("bm25_length", sa.BigInteger, nullable=False, server_default="0"))
    op.add_column("index_versions", sa.Column("fusion", JSONB))
    op.create_table(
        "bm25_postings",
        sa.Column("repo_id", sa.Integer, nullable=False),
        sa.Column("term", sa.Text, nullable=False),
        sa.Column("chunk_id", sa.BigInteger, sa.ForeignKey("chunks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("snapshot_id", sa.Integer, nullable=False),
        sa.Column("tf", sa.Integer, nullable=False),
        sa.Column("dl", sa.Integer, nullable=False),
    )
    op.create_table(
        "bm25_terms",
        sa.Column("repo_id", sa.Integer, sa.ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("term", sa.Text, primary_key=True),
        sa.Column("df", sa.Integer, nullable=False),
    )
    op.drop_index("chunks_search", "chunks")
    op.drop_column("chunks", "search")

    conn = op.get_bind()
    for fid, path, language in conn.execute(sa.text("SELECT id, path, language FROM files")).all():
        role = classify(path, language)
        if role != "source":
            conn.execute(sa.text("UPDATE files SET role = :role WHERE id = :id"), {"role": role, "id": fid})
    raw = conn.connection.driver_connection
    last = 0
    while True:
        rows = conn.execute(
            sa.text(
                "SELECT c.id, c.repo_id, f.snapshot_id, f.path, c.text FROM chunks c JOIN files f ON f.id = c.file_id "
                "WHERE c.id > :last ORDER BY c.id LIMIT :n"
            ),
            {"last": last, "n": BATCH},
        ).all()
        if not rows:
            break
        lengths = []
        with raw.cursor().copy("COPY bm25_postings (repo_id, term, chunk_id, snapshot_id, tf, dl) FROM STDIN") as copy:
            for cid, repo, snap, path, text in rows:
                found = chunk_tokens(path, text)
                lengths.append((cid, len(found)))
                for term, tf in Counter(found).items():
                    copy.write_row((repo, term, cid, snap, tf, len(found)))
        conn.execute(
            sa.text(
                "UPDATE chunks SET bm25_length = v.n "
                "FROM unnest(CAST(:ids AS bigint[]), CAST(:ns AS int[])) AS v(id, n) "
                "WHERE chunks.id = v.id"
            ),
            {"ids": [c for c, _ in lengths], "ns": [n for _, n in lengths]},
        )
        last = rows[-1][0]
    op.create_index(
        "bm25_postings_term",
        "bm25_postings",
        ["repo_id", "term"],
        postgresql_include=["chunk_id", "snapshot_id", "tf", "dl"],
    )
    op.create_index("bm25_postings_chunk", "bm25_postings", ["chunk_id"])
    for (repo,) in conn.execute(sa.text("SELECT id FROM repositories WHERE current_snapshot_id IS NOT NULL")).all():
        for statement in filter(str.strip, REBUILD_BM25_STATS.split(";")):
            conn.execute(sa.text(statement), {"r": repo})


def downgrade() -> None:
    op.add_column("chunks", sa.Column("search", TSVECTOR, nullable=False, server_default=sa.text("''::tsvector")))
    # 0008 never rewrites an unchanged file's vector: give every chunk one from its symbol and text (close to,
    # not the same as, what 0008's ingest wrote, which split identifiers first).
    op.execute(
        "UPDATE chunks SET search = setweight(to_tsvector('english', coalesce(symbol, '')), 'A') || "
        "setweight(to_tsvector('english', left(text, 200000)), 'D')"
    )
    op.create_index("chunks_search", "chunks", ["search"], postgresql_using="gin")
    op.drop_table("bm25_terms")
    op.drop_table("bm25_postings")
    op.drop_column("index_versions", "fusion")
    op.drop_column("repositories", "bm25_length")
    op.drop_column("repositories", "bm25_docs")
    op.drop_column("chunks", "bm25_length")
    op.drop_column("files", "role")
