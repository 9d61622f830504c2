"""Training runs record the process that runs them, so a run whose process died can be marked failed.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("training_runs", sa.Column("host", sa.Text))
    op.add_column("training_runs", sa.Column("pid", sa.Integer))


def downgrade() -> None:
    op.drop_column("training_runs", "pid")
    op.drop_column("training_runs", "host")
