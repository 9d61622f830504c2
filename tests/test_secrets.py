"""Secrets are never stored nor returned: redaction that keeps every line, secret files skipped, on real code."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from grounding import store
from grounding.index.ingest import ingest
from grounding.index.retro_db import repository_texts
from grounding.index.secrets import find_secrets, is_secret_file, redact, redact_bytes
from grounding.lexical import tokens
from grounding.search.retrieve import search
from tests.conftest import copy_tree, package_tree

_rng = random.SystemRandom()


def _random(alphabet: str, n: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def openssh_key() -> str:
    return (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        .decode()
    )


def planted() -> dict[str, str]:
    """Fresh secrets of each kind, random so that nothing else in the tree can hold them."""
    upper_digits = string.ascii_uppercase + string.digits
    alnum = string.ascii_letters + string.digits
    return {
        "aws_id": "AKIA" + _random(upper_digits, 16),
        "aws_secret": _random(alnum + "/+", 40),
        "github": "ghp_" + _random(alnum, 36),
        # Distinct characters: 1 in ~4,000 random draws repeats enough to fall under the entropy floor.
        "password": "".join(_rng.sample(alnum, 14)) + "#!" + _random(string.digits, 2),
        "env_secret": _random(string.hexdigits.lower(), 40),
        "db_password": _random(alnum, 12) + "9",
    }


# --- redact(), pure ----------------------------------------------------------------------------


def test_every_kind_is_found_and_lines_are_kept():
    s = planted()
    pem = rsa_pem()
    escaped = pem.strip().replace("\n", "\\n")  # a key in a one-line string literal
    text = (
        f'KEY = """{pem}"""\n'
        "def after_key():\n    return KEY\n"
        f'ESCAPED = "{escaped}"\n'
        f'aws_access_key_id = "{s["aws_id"]}"\n'
        f'aws_secret_access_key = "{s["aws_secret"]}"\n'
        f'GITHUB_TOKEN = "{s["github"]}"\n'
        f'client = Client(password="{s["password"]}")\n'
        'slack = "xoxb-123456789012-1234567890123-' + _random(string.ascii_letters, 24) + '"\n'
        'maps = "AIza' + _random(string.ascii_letters + string.digits + "_-", 35) + '"\n'
        'stripe.api_key = "sk_live_' + _random(string.ascii_letters + string.digits, 24) + '"\n'
        'auth = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.' + _random(string.ascii_letters, 43) + '"\n'
        f'url = "postgresql://app:{s["db_password"]}@db.internal:5432/app"\n'
    )
    redacted, found = redact(text)
    kinds = [f.kind for f in found]
    assert kinds == [
        "private-key",
        "private-key",
        "aws-access-key-id",
        "aws-secret-access-key",
        "github-token",
        "secret",
        "slack-token",
        "google-api-key",
        "stripe-key",
        "jwt",
        "password",
    ]
    assert redacted.count("\n") == text.count("\n")
    lines, original = redacted.split("\n"), text.split("\n")
    # The key block: its marker on the BEGIN line, empty lines down to the END line's rest.
    block = pem.count("\n")
    assert lines[0] == 'KEY = """[REDACTED:private-key]'
    assert lines[1:block] == [""] * (block - 1)
    assert lines[block] == '"""'
    assert lines[block + 1 : block + 3] == original[block + 1 : block + 3]  # the function after it
    assert found[0].line == 1 and found[2].line == block + 5
    for value in s.values():
        if value != s["env_secret"]:
            assert value not in redacted
    assert 'GITHUB_TOKEN = "[REDACTED:github-token]"' in redacted
    assert "postgresql://app:[REDACTED:password]@db.internal" in redacted


def test_a_truncated_key_and_an_openssh_key_are_redacted():
    key = openssh_key()
    cut = key.split("-----END")[0]
    for text in (key, "x = 1\n" + cut + "y = 2\n"):
        redacted, found = redact(text)
        assert [f.kind for f in found] == ["private-key"]
        assert redacted.count("\n") == text.count("\n")
        body = [line for line in key.splitlines() if not line.startswith("-----")]
        assert not any(line in redacted for line in body)
    assert redact("x = 1\n" + cut + "y = 2\n")[0].endswith("y = 2\n")


@pytest.mark.parametrize(
    "line",
    [
        'password = "changeme"',
        'password = "hunter2"',
        'token = "<token>"',
        'api_key = "${API_KEY}"',
        'secret = ""',
        "SECRET_KEY = os.environ['SECRET_KEY']",
        "self.password = password",
        'token_type = "Bearer"',
        'pad_token = "<|endoftext|>"',
        'PASSWORD_PROMPT = "Enter your password please"',
        'api_key = "xxxxxxxxxxxxxxxxxxxxxxxx"',
        'password: str = "your-password-here"',
        "AWS_ACCESS_KEY_ID = 'AKIAIOSFODNN7EXAMPLE'",
        'BEGIN = "-----BEGIN RSA PRIVATE KEY-----"; END = "-----END RSA PRIVATE KEY-----"',
        "STRIPE_SECRET_KEY=changeme",
        "token = get_token(session)",
        'url = "http://user:pass@proxy:3128"',
        "secret_key = settings.SECRET_KEY_FALLBACK",
        'bypass = "aB3dE5fG7hJ9kL2m"',  # `pass` counts as a name's last word only: db_pass, SMTP_PASS
        'mode = os.getenv("MODE", "aB3dE5fG7hJ9kL2m")',  # a fallback counts only for a secret-sounding name
        'WWW_AUTHENTICATE = "Basic realm=api"',
        'auth = "Basic dXNlcjpwYXNzd29yZA=="',  # user:password, a word
    ],
)
def test_placeholders_and_code_are_not_secrets(line):
    assert find_secrets(line + "\n") == []


def test_shapes_a_review_found_unredacted_are_redacted():
    import base64

    value = "".join(_rng.sample(string.ascii_letters + string.digits, 20))
    key = base64.b64encode(_random(string.ascii_letters, 48).encode()).decode()
    basic = base64.b64encode(f"deploy:{value}".encode()).decode()
    text = (
        f'DB_PASS = "{value}"\n'
        f"smtp_pass: str = '{value}'\n"
        f'headers = {{"Authorization": "Basic {basic}"}}\n'
        f'conn = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net"\n'
        f"bus = 'Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={key[:44]}'\n"
        f'password = os.getenv("DB_PASSWORD", "{value}")\n'
        f"token = settings.get('api_token', '{value}')\n"
    )
    redacted, found = redact(text)
    assert [f.kind for f in found] == ["secret", "secret", "basic-auth", "azure-key", "azure-key", "secret", "secret"]
    assert value not in redacted and key[:44] not in redacted and basic not in redacted
    assert redacted.count("\n") == text.count("\n")


def test_env_and_config_lines_are_redacted():
    value = _random(string.ascii_letters + string.digits, 23) + "7"
    text = f"DEBUG=true\nexport API_TOKEN={value}\nSECRET_KEY = {value[::-1]}  # rotate monthly\npassword: {value}9\n"
    redacted, found = redact(text)
    assert [f.line for f in found] == [2, 3, 4]
    assert redacted == (
        "DEBUG=true\nexport API_TOKEN=[REDACTED:secret]\nSECRET_KEY = [REDACTED:secret]  # rotate monthly\n"
        "password: [REDACTED:secret]\n"
    )


def test_bytes_that_are_not_utf8_pass_through():
    token = "ghp_" + _random(string.ascii_letters + string.digits, 36)
    data = b"\xff\xfe latin-1: caf\xe9\n" + f'TOKEN = "{token}"\n'.encode()
    redacted, found = redact_bytes(data)
    assert redacted == b"\xff\xfe latin-1: caf\xe9\n" + b'TOKEN = "[REDACTED:github-token]"\n'
    assert [f.kind for f in found] == ["github-token"]
    clean = b"x = 1\n\xff\n"
    assert redact_bytes(clean) == (clean, [])


@pytest.mark.parametrize(
    ("path", "secret"),
    [
        (".env", True),
        (".env.local", True),
        ("config/.env.production", True),
        ("prod.env", True),
        (".env.example", False),
        (".env.sample", False),
        (".env.template", False),
        ("deploy/id_rsa", True),
        ("id_ed25519", True),
        ("id_rsa.pub", False),
        ("certs/server.pem", True),
        ("tls/server.key", True),
        ("client.p12", True),
        ("client.pfx", True),
        ("home/.aws/credentials", True),
        ("docs/credentials", False),
        ("terraform.tfstate", True),
        (".netrc", True),
        ("env.py", False),
        ("keys.py", False),
    ],
)
def test_secret_files_by_name(path, secret):
    assert is_secret_file(path) is secret


def test_registry_configs_are_secret_only_with_credentials():
    assert is_secret_file(".npmrc", b"//registry.npmjs.org/:_authToken=npm_abc\n")
    assert is_secret_file(".pypirc", b"[pypi]\nusername = __token__\npassword = pypi-abc\n")
    assert not is_secret_file(".npmrc", b"registry=https://registry.npmjs.org/\nsave-exact=true\n")
    assert is_secret_file(".npmrc")  # unread: assumed to hold them


@pytest.mark.parametrize("package", ["requests", "click"])
def test_no_false_positive_on_real_code(package):
    for path in sorted(package_tree(package).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert find_secrets(text) == [], path


# --- ingest and RETRO on real code -------------------------------------------------------------


@pytest.fixture
def seeded(tmp_path):
    """requests with secrets planted in its code, a .env, a .env.example and an SSH key: (tree, secrets, lines)."""
    tree = copy_tree("requests", tmp_path / "requests")
    s = planted()
    pem = rsa_pem()
    sessions = tree / "sessions.py"
    sessions.write_text(
        sessions.read_text(encoding="utf-8")
        + f'\n\nDEPLOY_KEY = """{pem}"""\n\n\n'
        + "def planted_after_key():\n"
        + '    """Sign a deployment with the key above."""\n'
        + "    return DEPLOY_KEY.encode()\n",
        encoding="utf-8",
    )
    models = tree / "models.py"
    models.write_text(
        models.read_text(encoding="utf-8")
        + f'\n\naws_access_key_id = "{s["aws_id"]}"\n'
        + f'aws_secret_access_key = "{s["aws_secret"]}"\n'
        + f'GITHUB_TOKEN = "{s["github"]}"\n'
        + f'DB_PASSWORD = "{s["password"]}"\n\n\n'
        + "def planted_after_tokens():\n    return GITHUB_TOKEN\n",
        encoding="utf-8",
    )
    (tree / ".env").write_text(
        f"SECRET_KEY={s['env_secret']}\nDATABASE_URL=postgres://app:{s['db_password']}@db/app\n", encoding="utf-8"
    )
    (tree / ".env.example").write_text("SECRET_KEY=changeme\nDATABASE_URL=postgres://app:app@db/app\n")
    (tree / "deploy").mkdir()
    (tree / "deploy" / "id_rsa").write_text(openssh_key(), encoding="utf-8")
    secrets = {**s, **{f"pem{i}": line for i, line in enumerate(pem.splitlines()[1:-1])}}
    return tree, secrets


def lexeme_count(conn, repo: int, term: str) -> int:
    """Chunks of `repo` whose BM25 postings hold `term`, tokenised as the ingest did."""
    return conn.execute(
        sa.text("SELECT count(*) FROM bm25_postings WHERE repo_id = :r AND term = :t"), {"r": repo, "t": term}
    ).scalar_one()


def def_line(path: Path, name: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.startswith(f"def {name}("))


def test_ingest_stores_no_secret_and_keeps_lines(engine, repo_name, hashing, seeded):
    tree, secrets = seeded
    report = ingest(str(tree), name=repo_name, embedder=hashing)

    reasons = {s.path: s.reason for s in report.skipped}
    assert reasons[".env"] == "secret-file" and reasons["deploy/id_rsa"] == "secret-file"
    assert ".env.example" not in reasons
    assert report.secrets_redacted == 5  # the key, the AWS pair, the GitHub token, the password
    with engine.connect() as conn:
        rid = store.repo_id(conn, repo_name)
        stats = store.snapshot(conn, report.snapshot_id)["stats"]
        assert stats["redacted"] == 5 and stats["redacted_files"] == ["models.py", "sessions.py"]

        # No stored text holds a secret: chunks (text, context, symbol), files, snapshots, skipped files.
        for name, value in secrets.items():
            hits = conn.execute(
                sa.text(
                    "SELECT count(*) FROM chunks c WHERE c.repo_id = :r AND (position(:v in c.text) > 0 "
                    "OR position(:v in c.context) > 0 OR position(:v in coalesce(c.symbol, '')) > 0)"
                ),
                {"r": rid, "v": value},
            ).scalar_one()
            assert hits == 0, name
            elsewhere = conn.execute(
                sa.text(
                    "SELECT (SELECT count(*) FROM files WHERE repo_id = :r AND position(:v in path) > 0) + "
                    "(SELECT count(*) FROM snapshots WHERE repo_id = :r AND position(:v in stats::text) > 0) + "
                    "(SELECT count(*) FROM skipped_files k JOIN snapshots s ON s.id = k.snapshot_id "
                    " WHERE s.repo_id = :r AND position(:v in k.path) > 0)"
                ),
                {"r": rid, "v": value},
            ).scalar_one()
            assert elsewhere == 0, name
            # Nor the lexical index: none of the terms the secret would have given is a BM25 term.
            for term in tokens(value):
                if len(term) >= 6 and any(c.isdigit() for c in term):
                    assert lexeme_count(conn, rid, term) == 0, (name, term)
        assert lexeme_count(conn, rid, "redacted") >= 2

        # The embedding was made from the redacted text.
        context, text, vector = conn.execute(
            sa.text(
                "SELECT c.context, c.text, e.embedding::text FROM chunks c JOIN embeddings e ON e.chunk_id = c.id "
                "WHERE c.repo_id = :r AND position('[REDACTED:github-token]' in c.text) > 0"
            ),
            {"r": rid},
        ).one()
        expected = hashing.embed_batch([f"{context}\n{text}" if context else text])[0]
        # Stored as halfvec: 16-bit floats, within 2^-11 of each value.
        assert np.allclose(np.array(json.loads(vector)), expected, rtol=2**-11, atol=1e-6)

        # Lines: every chunk of a redacted file sits on the original file's lines.
        rows = conn.execute(
            sa.text(
                "SELECT f.path, c.symbol, c.start_line, c.end_line, c.text FROM chunks c "
                "JOIN files f ON f.id = c.file_id WHERE c.repo_id = :r AND f.path IN ('sessions.py', 'models.py')"
            ),
            {"r": rid},
        ).all()
    starts = {symbol: start for _, symbol, start, _, _ in rows}
    assert starts["planted_after_key"] == def_line(tree / "sessions.py", "planted_after_key")
    assert starts["planted_after_tokens"] == def_line(tree / "models.py", "planted_after_tokens")
    for path, _, start, end, text in rows:
        original = (tree / path).read_text(encoding="utf-8").split("\n")
        assert text.count("\n") == end - start
        for got, line in zip(text.split("\n"), original[start - 1 : end]):
            assert got == line or "[REDACTED:" in got or got == "", (path, start, got)

    # A search for a secret returns nothing that holds it.
    for name in ("github", "aws_id", "password", "pem3"):
        for hit in search(repo_name, secrets[name], k=10, mode="lexical", rerank=False):
            assert secrets[name] not in hit.citation.snippet

    # Re-ingest is incremental: a file's hash is of its bytes, not of its redacted text.
    again = ingest(str(tree), name=repo_name, embedder=hashing)
    assert again.files_changed == 0 and again.chunks_added == 0 and again.secrets_redacted == 0


def test_an_index_made_before_redaction_is_redacted_by_the_next_ingest(engine, repo_name, hashing, seeded, monkeypatch):
    """Files whose bytes did not change are processed again when INDEXING_VERSION moves on."""
    import grounding.index.secrets
    import grounding.records

    tree, secrets = seeded
    (tree / ".env").unlink()  # a secret *file* is skipped by name, a separate rule: keep to redaction here
    (tree / "deploy" / "id_rsa").unlink()

    def stored(value: str) -> int:
        with engine.connect() as conn:
            return conn.execute(
                sa.text(  # superseded rows are deleted when an ingest finishes: every row is current
                    "SELECT count(*) FROM chunks c JOIN repositories r ON r.id = c.repo_id "
                    "WHERE r.name = :n AND position(:v in c.text) > 0"
                ),
                {"n": repo_name, "v": value},
            ).scalar_one()

    # As an older grounding did: no redaction, files keyed by the version it had.
    with monkeypatch.context() as old:
        old.setattr(grounding.index.secrets, "redact_bytes", lambda data: (data, []))
        old.setattr(grounding.records, "INDEXING_VERSION", 1)
        first = ingest(str(tree), name=repo_name, embedder=hashing)
    assert first.secrets_redacted == 0 and stored(secrets["github"]) == 1

    upgraded = ingest(str(tree), name=repo_name, embedder=hashing)
    assert upgraded.files_changed == first.files_changed, "every file is processed again"
    assert upgraded.secrets_redacted == 5 and stored(secrets["github"]) == 0
    assert upgraded.embeddings_computed < first.embeddings_computed // 10, "unchanged chunks keep their vectors"
    hits = search(repo_name, secrets["github"], k=10, mode="lexical", rerank=False)
    assert all(secrets["github"] not in h.citation.snippet for h in hits)
    again = ingest(str(tree), name=repo_name, embedder=hashing)
    assert again.files_changed == 0 and again.chunks_added == 0


def test_retro_texts_hold_no_secret(engine, repo_name, hashing, seeded):
    tree, secrets = seeded
    ingest(str(tree), name=repo_name, embedder=hashing)
    texts = dict(repository_texts(repo_name))
    assert ".env" not in texts and "deploy/id_rsa" not in texts and ".env.example" in texts
    for path, text in texts.items():
        for name, value in secrets.items():
            assert value not in text, (path, name)
        original = (tree / path).read_text(encoding="utf-8")
        assert text.count("\n") == original.count("\n"), path
    assert "[REDACTED:private-key]" in texts["sessions.py"]
    assert texts["utils.py"] == (tree / "utils.py").read_text(encoding="utf-8")
