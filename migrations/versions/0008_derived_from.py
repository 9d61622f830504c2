"""Derived eval indexes are marked in the catalogue (repositories.derived_from), not recognised by their name.

Access to a derived index follows its parent's grants through this column; a repository whose name
merely looks derived (`billing~eval-payroll`, ingested by someone) is an ordinary repository. Existing
eval indexes, made by grounding itself under `NAME~eval-docstrings` or `NAME~eval-commits`, are
marked when that parent exists. Credentials that older releases stored inside git URLs, and echoed in
git's error messages, are removed.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


# Module constants so that tests/test_security.py runs the same statements on rows of its own.
MARK_DERIVED = """
    UPDATE repositories d SET derived_from = p.id
    FROM repositories p
    WHERE d.name IN (p.name || '~eval-docstrings', p.name || '~eval-commits') AND d.derived_from IS NULL
"""
STRIP_SOURCE_CREDENTIALS = r"UPDATE repositories SET source = regexp_replace(source, '^(https?://)[^/?#]*@', '\1', 'i')"
SCRUB_ERROR_CREDENTIALS = (
    r"UPDATE snapshots SET error = regexp_replace(error, '([a-z][a-z0-9+.-]*://)[^/?#\s]*@', '\1***@', 'gi') "
    r"WHERE error ~* '[a-z][a-z0-9+.-]*://[^/?#\s]*@'"
)


def upgrade() -> None:
    op.add_column(
        "repositories",
        sa.Column("derived_from", sa.Integer, sa.ForeignKey("repositories.id", ondelete="CASCADE")),
    )
    op.create_index("repositories_derived_from", "repositories", ["derived_from"])
    op.execute(MARK_DERIVED)
    op.execute(STRIP_SOURCE_CREDENTIALS)
    op.execute(SCRUB_ERROR_CREDENTIALS)


def downgrade() -> None:
    op.drop_index("repositories_derived_from", "repositories")
    op.drop_column("repositories", "derived_from")
