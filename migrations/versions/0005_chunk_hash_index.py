"""An index on chunks' content hash alone, for embedding reuse across repositories.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("chunks_content_hash", "chunks", ["content_hash"])


def downgrade() -> None:
    op.drop_index("chunks_content_hash", "chunks")
