"""Evaluation runs: dataset, split, mode, index version and metrics of each `grounding eval`.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("repo_id", sa.Integer, sa.ForeignKey("repositories.id", ondelete="CASCADE"), nullable=False),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("split", sa.Text, nullable=False),
        sa.Column("mode", sa.Text, nullable=False),
        sa.Column("index_version_id", sa.Integer),
        sa.Column("encoder", sa.Text),
        sa.Column("questions", sa.Integer, nullable=False),
        sa.Column("metrics", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_index("eval_runs_repo", "eval_runs", ["repo_id", "id"])


def downgrade() -> None:
    op.drop_table("eval_runs")
