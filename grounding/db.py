"""The database: which Postgres (GROUNDING_DATABASE_URL or the embedded server), its engine, its migrations."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from grounding.config import get_settings
from grounding.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_MIGRATION_LOCK = 0x67726E64  # advisory lock key that serialises `alembic upgrade` across processes


_embedded_servers: dict = {}  # data dir -> pgserver handle, one per process


def _embedded_server(data_dir: str):
    """Start (or join) the embedded PostgreSQL under GROUNDING_HOME; several processes share it safely."""
    path = Path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # platformdirs' RuntimeDirWarning where XDG_RUNTIME_DIR is unset (cron, CI,
        warnings.simplefilter("ignore")  # containers): pgserver falls back to /tmp/runtime-UID, which is fine
        import pgserver

    if data_dir in _embedded_servers:
        return _embedded_servers[data_dir]
    try:
        server = pgserver.get_server(path, cleanup_mode="stop")
    except Exception as err:  # pgserver raises subprocess and assertion errors alike
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {path}: {err}. "
            f"See {path / 'log'}, or set GROUNDING_DATABASE_URL to a Postgres with pgvector."
        ) from err
    _embedded_servers[data_dir] = server
    return server


def embedded_url(data_dir: Path) -> str:
    """The URL of the embedded PostgreSQL in `data_dir`, started (or joined) on demand."""
    return _embedded_server(str(data_dir)).get_uri()


def stop_embedded() -> None:
    """Stop the embedded servers this process started, unless other processes still use them."""
    for server in _embedded_servers.values():
        server.cleanup()
    _embedded_servers.clear()


def database_url() -> str:
    """The SQLAlchemy URL in force: the configured one, else the embedded server's (started on demand)."""
    settings = get_settings()
    url = settings.database_url or embedded_url(settings.embedded_data_dir)
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _describe(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


_engines: dict[str, Engine] = {}
PING_AFTER_IDLE_S = 10.0  # a pooled connection idle longer than this is pinged before use


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection before use only when it sat idle PING_AFTER_IDLE_S or longer.

    `pool_pre_ping` pings on every checkout: one extra round trip per statement block, several per search
    (~0.2 ms each here). A connection back in the pool a moment ago is as alive as a ping would show; one
    idle longer (the server restarted, a proxy cut it) is pinged, and a dead one is replaced before use."""

    @sa.event.listens_for(engine.pool, "checkin")
    def _checked_in(dbapi_connection, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine.pool, "connect")
    def _connected(dbapi_connection, record) -> None:
        record.info["idle_since"] = time.monotonic()  # a connection opened just now needs no ping

    @sa.event.listens_for(engine.pool, "checkout")
    def _checked_out(dbapi_connection, record, proxy) -> None:
        if time.monotonic() - record.info.get("idle_since", float("-inf")) < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as err:  # the pool discards this connection and checks out a fresh one
            raise sa.exc.DisconnectionError(str(err)) from err


def _engine_for(url: str) -> Engine:
    if url in _engines:
        return _engines[url]
    engine = sa.create_engine(url, pool_size=5, max_overflow=10, pool_use_lifo=True)  # the warmest first
    _ping_when_idle(engine)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as err:
        engine.dispose()
        raise DatabaseUnavailable(
            f"cannot reach Postgres at {_describe(url)}: {str(err.orig).strip().splitlines()[0]}. "
            "Start it, fix GROUNDING_DATABASE_URL, or unset it to use the embedded server."
        ) from err
    migrate(engine)
    _engines[url] = engine
    return engine


def get_engine() -> Engine:
    """The engine for the configured database, migrated to the latest schema on first use."""
    return _engine_for(database_url())


def reset() -> None:
    """Dispose of engines (after settings change, or in tests)."""
    while _engines:
        _engines.popitem()[1].dispose()


def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def migrate(engine: Engine) -> None:
    """Run `alembic upgrade head` unless the database is already there; one process at a time."""
    head = _head_revision()
    with engine.connect() as conn:
        if _current_revision(conn) == head:
            return
    from alembic import command
    from alembic.config import Config

    config = Config(str(MIGRATIONS_DIR.parent / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        if _current_revision(conn) == head:
            return
        log.info("migrating %s to %s", _describe(str(engine.url)), head)
        config.attributes["connection"] = conn
        try:
            command.upgrade(config, "head")
        except sa.exc.DBAPIError as err:
            raise DatabaseUnavailable(
                f"could not migrate {_describe(str(engine.url))}: {err.orig}. "
                "The database needs the pg_trgm extension and pgvector 0.7 or newer (for halfvec)."
            ) from err


def _current_revision(conn) -> str | None:
    exists = conn.execute(sa.text("SELECT to_regclass('alembic_version') IS NOT NULL")).scalar()
    if not exists:
        return None
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
