"""Which databases have used this GROUNDING_HOME: a file of their identities, written at each ingest.

Files under GROUNDING_HOME are named by database ids (`checkouts/repo-ID`, `runs/ID`), so a home shared by two
deployments with different databases (a GROUNDING_DATABASE_URL set without changing the home) holds files one
database cannot account for. What deletes by such names asks here first.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Connection

from grounding import store
from grounding.config import get_settings

STAMP = "databases"  # one identity per line: the system identifier and name of each database that ingested here


def _stamp() -> Path:
    return get_settings().home / STAMP


def note_database(conn: Connection) -> None:
    """Record the connected database as one that keeps files in this home (once)."""
    identity = store.database_identity(conn)
    if identity not in home_databases():
        path = _stamp()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.write(identity + "\n")


def home_databases() -> set[str]:
    path = _stamp()
    return set(path.read_text(encoding="utf-8").split()) if path.is_file() else set()


def home_is_ours(conn: Connection) -> bool:
    """Whether this home's id-named files are the connected database's alone: it is the one database recorded."""
    return home_databases() == {store.database_identity(conn)}
