"""Grants of repositories to principals (`user:NAME`, `group:NAME`) and group membership."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = [
    "insert_grant",
    "delete_grant",
    "insert_member",
    "delete_member",
    "granted_repos",
    "list_grants",
    "list_members",
]


def insert_grant(conn: Connection, principal: str, repo: int) -> bool:
    """Grant `repo` to `principal`; False if it already held the grant."""
    return (
        conn.execute(
            sa.text("INSERT INTO grants (principal, repo_id) VALUES (:p, :r) ON CONFLICT DO NOTHING"),
            {"p": principal, "r": repo},
        ).rowcount
        > 0
    )


def delete_grant(conn: Connection, principal: str, repo: int) -> bool:
    """Take `repo` back from `principal`; False if it held no such grant."""
    return (
        conn.execute(
            sa.text("DELETE FROM grants WHERE principal = :p AND repo_id = :r"), {"p": principal, "r": repo}
        ).rowcount
        > 0
    )


def insert_member(conn: Connection, user: str, group: str) -> bool:
    """Add `user` to `group`; False if already a member."""
    return (
        conn.execute(
            sa.text("INSERT INTO group_members (group_name, user_name) VALUES (:g, :u) ON CONFLICT DO NOTHING"),
            {"g": group, "u": user},
        ).rowcount
        > 0
    )


def delete_member(conn: Connection, user: str, group: str) -> bool:
    """Remove `user` from `group`; False if not a member."""
    return (
        conn.execute(
            sa.text("DELETE FROM group_members WHERE group_name = :g AND user_name = :u"), {"g": group, "u": user}
        ).rowcount
        > 0
    )


def granted_repos(conn: Connection, user: str) -> list[str]:
    """Names of the repositories `user` may read: granted to them or to one of their groups, and every
    eval index the catalogue marks as derived from one of those (never by its name)."""
    return list(
        conn.execute(
            sa.text(
                """
                WITH granted AS (
                    SELECT g.repo_id AS id FROM grants g
                    WHERE g.principal = 'user:' || :u
                       OR g.principal IN (SELECT 'group:' || group_name FROM group_members WHERE user_name = :u)
                )
                SELECT r.name FROM repositories r
                WHERE r.id IN (SELECT id FROM granted) OR r.derived_from IN (SELECT id FROM granted)
                """
            ),
            {"u": user},
        ).scalars()
    )


def list_grants(conn: Connection, repo: int | None = None) -> list[tuple[str, str]]:
    """(principal, repository name) of every grant, or of one repository's."""
    rows = conn.execute(
        sa.text(
            "SELECT g.principal, r.name FROM grants g JOIN repositories r ON r.id = g.repo_id "
            "WHERE CAST(:r AS integer) IS NULL OR g.repo_id = :r"
        ),
        {"r": repo},
    )
    return [(principal, name) for principal, name in rows]


def list_members(conn: Connection) -> list[tuple[str, str]]:
    """(group, user) of every membership."""
    rows = conn.execute(sa.text("SELECT group_name, user_name FROM group_members"))
    return [(group, user) for group, user in rows]
