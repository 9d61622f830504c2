"""API tokens (grounding.tokens): rows keyed by the token's public id, holding a SHA-256 of its secret."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["TOKEN_COLUMNS", "insert_token", "token_by_hash", "revoke_token", "list_tokens"]

TOKEN_COLUMNS = "id, user_name, admin, label, created_at, expires_at, revoked_at, last_used_at"


def insert_token(
    conn: Connection,
    token_id: str,
    *,
    user: str,
    secret_hash: str,
    admin: bool,
    label: str | None,
    expires_at: dt.datetime | None,
) -> None:
    """Store a new token's row; the secret itself is never stored."""
    conn.execute(
        sa.text(
            "INSERT INTO api_tokens (id, user_name, secret_hash, admin, label, expires_at) "
            "VALUES (:i, :u, :h, :a, :l, :e)"
        ),
        {"i": token_id, "u": user, "h": secret_hash, "a": admin, "l": label, "e": expires_at},
    )


def token_by_hash(conn: Connection, secret_hash: str) -> dict | None:
    """The row whose secret hashes to `secret_hash`, revoked and expired ones included; None if none does.

    A live token's use is noted in the same statement (one round trip), at most once a minute, so a busy
    token does not write on every request."""
    row = conn.execute(
        sa.text(
            f"""
            WITH found AS (SELECT {TOKEN_COLUMNS}, now() AS now FROM api_tokens WHERE secret_hash = :h),
            touched AS (
                UPDATE api_tokens SET last_used_at = now()
                WHERE id = (SELECT id FROM found) AND revoked_at IS NULL
                  AND (expires_at IS NULL OR expires_at > now())
                  AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
            )
            SELECT * FROM found
            """
        ),
        {"h": secret_hash},
    ).one_or_none()
    return None if row is None else dict(row._mapping)


def revoke_token(conn: Connection, token_id: str) -> bool:
    """Mark the token revoked; False if there is no such token or it was revoked already."""
    return (
        conn.execute(
            sa.text("UPDATE api_tokens SET revoked_at = now() WHERE id = :i AND revoked_at IS NULL"), {"i": token_id}
        ).rowcount
        > 0
    )


def list_tokens(conn: Connection, user: str | None = None) -> list[dict]:
    """Every token's row (never a secret or its hash), or one user's, newest first."""
    rows = conn.execute(
        sa.text(
            f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE CAST(:u AS text) IS NULL OR user_name = :u "
            "ORDER BY created_at DESC, id"
        ),
        {"u": user},
    )
    return [dict(r._mapping) for r in rows]
