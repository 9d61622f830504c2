"""Access control: repositories granted to users and groups, and who belongs to which group.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-11
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "group_members",
        sa.Column("group_name", sa.Text, primary_key=True),
        sa.Column("user_name", sa.Text, primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_index("group_members_user", "group_members", ["user_name"])
    op.create_table(
        "grants",
        sa.Column("principal", sa.Text, primary_key=True),
        sa.Column("repo_id", sa.Integer, sa.ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.CheckConstraint("principal ~ '^(user|group):.+$'", name="grants_principal_kind"),
    )
    op.create_index("grants_repo", "grants", ["repo_id"])


def downgrade() -> None:
    op.drop_table("grants")
    op.drop_table("group_members")
