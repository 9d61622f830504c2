"""The HTTP API against a real uvicorn server on loopback, called with httpx: tokens, every endpoint's access
check (a user granted one of two repositories sees nothing of the other), problem+json errors, SSE."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa

from grounding import access, tokens
from grounding.cli import main
from grounding.errors import InvalidArgument
from grounding.index.ingest import ingest
from tests.conftest import git_repo, running
from tests.conftest import write_tree as tree

PUBLIC = {"app/greet.py": "def greet(name):\n    return f'hello {name}'\n\n\ndef farewell(name):\n    return 'bye'\n"}
PAYROLL = {"salaries/compute_bonus.py": "def compute_payroll_bonus(salary):\n    return salary * 0.42\n"}
SECRET_WORDS = ("payroll", "bonus", "salar", "0.42")


@pytest.fixture
def world(engine, repo_name, hashing, tmp_path):
    """Two ingested repositories, `public` granted to alice and `payroll` to nobody, alice's and an admin's token."""
    names = {"public": f"{repo_name}-public", "payroll": f"{repo_name}-payroll"}
    ingest(str(git_repo(tree(tmp_path / "public", PUBLIC))), name=names["public"], embedder=hashing)
    ingest(str(git_repo(tree(tmp_path / "payroll", PAYROLL))), name=names["payroll"], embedder=hashing)
    tag = uuid.uuid4().hex[:6]
    alice, root = f"alice-{tag}", f"root-{tag}"
    access.grant(alice, names["public"])
    made = {"alice": tokens.create(alice), "admin": tokens.create(root, admin=True)}
    yield {**names, "alice": alice, "root": root, "tokens": made, "tmp": tmp_path}
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM api_tokens WHERE user_name IN (:a, :r)"), {"a": alice, "r": root})


@pytest.fixture
def api(world):
    from grounding.service.api import create_app

    with running(create_app(rate_limit=0)) as url:
        yield url


def client(url: str, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30)


def leaks(response: httpx.Response, world, *, echoed: str = "") -> list[str]:
    """Words of the payroll repository's code in a response; `echoed` (the name the caller sent) aside."""
    text = response.text.lower().replace(echoed.lower(), "") if echoed else response.text.lower()
    return [w for w in (*SECRET_WORDS, world["payroll"].lower()) if w in text]


def test_a_token_is_shown_once_and_only_its_hash_is_stored(world, engine):
    secret = world["tokens"]["alice"].secret
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT * FROM api_tokens WHERE user_name = :u"), {"u": world["alice"]}).one()
    assert secret not in " ".join(str(v) for v in stored)
    assert tokens.tokens(world["alice"])[0]["last_used_at"] is None
    assert tokens.authenticate(secret).user == world["alice"]
    listed = tokens.tokens(world["alice"])
    assert listed[0]["last_used_at"] is not None, "a use is noted"
    assert [t["id"] for t in listed] == [world["tokens"]["alice"].id] and "secret_hash" not in listed[0]


def test_search_ask_and_chunks_answer_within_the_grant(api, world):
    with client(api, world["tokens"]["alice"].secret) as c:
        assert c.get("/v1/me").json()["user"] == world["alice"]
        hits = c.post("/v1/search", json={"repo": world["public"], "query": "greet someone by name", "k": 3})
        assert hits.status_code == 200, hits.text
        first = hits.json()["hits"][0]
        assert first["citation"]["path"] == "app/greet.py"
        assert first["citation"]["cite"].startswith("app/greet.py:1-2@")
        chunk = c.get(f"/v1/chunks/{first['chunk_id']}").json()
        assert "def greet" in chunk["text"] and chunk["cite"] == first["citation"]["cite"]

        answer = c.post("/v1/ask", json={"repo": world["public"], "question": "how does greet say hello?"}).json()
        assert answer["citations"] and answer["citations"][0]["path"] == "app/greet.py"

        repos = c.get("/v1/repos").json()
        assert [r["name"] for r in repos["items"]] == [world["public"]] and repos["next_cursor"] is None
        detail = c.get(f"/v1/repos/{world['public']}").json()
        assert detail["snapshots"][0]["status"] == "complete" and detail["index_versions"][0]["status"] == "active"
        assert "source" not in detail  # the server's path or URL is an admin's business

        untrained = c.post("/v1/complete", json={"repo": world["public"], "prefix": "def greet"})
        assert untrained.status_code == 409 and untrained.json()["type"] == "urn:grounding:error:NotIndexed"
        assert "train-retro" in untrained.json()["detail"]


def test_ask_streams_server_sent_events(api, world):
    body = {"repo": world["public"], "question": "how does greet say hello?", "stream": True}
    with client(api, world["tokens"]["alice"].secret) as c, c.stream("POST", "/v1/ask", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [line.split(": ", 1)[1] for line in response.iter_lines() if line.startswith("event: ")]
    assert events[0] == "delta" and events[-1] == "answer" and "error" not in events


def test_nothing_of_an_ungranted_repository_comes_back_from_any_endpoint(api, world):
    """The access walk over every endpoint: alice is granted `public` only; `payroll` must look absent."""
    payroll, missing = world["payroll"], f"{world['payroll']}-nope"
    with client(api, world["tokens"]["admin"].secret) as admin:
        payroll_chunk = admin.post("/v1/search", json={"repo": payroll, "query": "bonus"})
        assert payroll_chunk.status_code == 404, "an admin token reads through grants too"
    with sa_chunk_id(payroll) as chunk_id, client(api, world["tokens"]["alice"].secret) as c:
        calls = {
            "search": lambda name: c.post("/v1/search", json={"repo": name, "query": "compute payroll bonus"}),
            "ask": lambda name: c.post("/v1/ask", json={"repo": name, "question": "how is the bonus computed?"}),
            "ask two": lambda name: c.post("/v1/ask", json={"repos": [world["public"], name], "question": "bonus?"}),
            "ask stream": lambda name: c.post("/v1/ask", json={"repo": name, "question": "bonus?", "stream": True}),
            "complete": lambda name: c.post("/v1/complete", json={"repo": name, "prefix": "def compute_"}),
            "repo": lambda name: c.get(f"/v1/repos/{name}"),
        }
        for what, call in calls.items():
            denied, absent = call(payroll), call(missing)
            assert denied.status_code == absent.status_code == 404, (what, denied.text)
            assert denied.headers["content-type"] == "application/problem+json"
            assert denied.json()["type"] == absent.json()["type"] == "urn:grounding:error:RepoNotFound", what
            assert denied.json()["detail"].replace(payroll, "X") == absent.json()["detail"].replace(missing, "X")
            assert not leaks(denied, world, echoed=payroll), (what, denied.text)
        chunk = c.get(f"/v1/chunks/{chunk_id}")
        nothing = c.get(f"/v1/chunks/{chunk_id + 10_000_000}")
        assert chunk.status_code == nothing.status_code == 404 and chunk.json()["detail"].split()[:2] == ["no", "chunk"]
        assert not leaks(chunk, world)
        assert world["payroll"] not in c.get("/v1/repos").text
        inline = c.post("/v1/search", json={"repo": world["public"], "query": f"repo:{payroll} compute payroll bonus"})
        assert inline.status_code in (200, 422) and not leaks(inline, world)
        for admin_only in (
            c.post(f"/v1/repos/{payroll}/ingest", json={}),
            c.get(f"/v1/repos/{payroll}/grants"),
            c.post(f"/v1/repos/{payroll}/grants", json={"principal": world["alice"]}),
        ):
            assert admin_only.status_code == 403 and not leaks(admin_only, world, echoed=payroll), admin_only.text
    assert access.allowed_repos(world["alice"]) == [world["public"]], "a refused grant changed nothing"


@contextlib.contextmanager
def sa_chunk_id(repo: str):
    from grounding import db

    with db.get_engine().connect() as conn:
        yield conn.execute(
            sa.text("SELECT c.id FROM chunks c JOIN repositories r ON r.id = c.repo_id WHERE r.name = :n LIMIT 1"),
            {"n": repo},
        ).scalar_one()


def test_expired_revoked_malformed_and_missing_tokens_get_401(api, world, engine):
    expired = tokens.create(world["alice"], expires="1m")
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = :i"), {"i": expired.id}
        )
    revoked = tokens.create(world["alice"])
    assert tokens.revoke(revoked.id) and not tokens.revoke(revoked.id)
    good = world["tokens"]["alice"].secret
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    body = {"repo": world["public"], "query": "greet"}
    for token in (expired.secret, revoked.secret, forged, "gr_nothex_x", "not-a-token", "a.b.c", None):
        with client(api, token) as c:
            for response in (c.post("/v1/search", json=body), c.get("/v1/repos"), c.get("/v1/chunks/1")):
                assert response.status_code == 401, (token, response.text)
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert response.json()["type"] == "urn:grounding:error:Unauthenticated"
                assert "greet" not in response.text
    with httpx.Client(base_url=api) as c:
        basic = c.get("/v1/repos", headers={"Authorization": "Basic " + good})
        assert basic.status_code == 401


def test_a_checked_token_is_trusted_for_token_cache_s_and_a_revoke_here_ends_it_at_once(
    api, world, engine, monkeypatch
):
    """The API does not ask the database on every request: a token it found live is trusted for
    GROUNDING_TOKEN_CACHE_S. A revoke in this process ends it at once; one made elsewhere (here: the row
    changed behind its back, as `grounding token revoke` in another process does) within that time."""
    from grounding.config import reset_settings

    monkeypatch.setenv("GROUNDING_TOKEN_CACHE_S", "1.5")
    reset_settings()

    def revoke_elsewhere(token_id: str) -> None:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE api_tokens SET revoked_at = now() WHERE id = :i"), {"i": token_id})

    remote = tokens.create(world["alice"])
    with client(api, remote.secret) as c:
        assert c.get("/v1/me").status_code == 200
        revoke_elsewhere(remote.id)
        assert c.get("/v1/me").status_code == 200, "trusted from the cache for a moment"
        time.sleep(1.6)
        assert c.get("/v1/me").status_code == 401, "and no longer than GROUNDING_TOKEN_CACHE_S"

    local = tokens.create(world["alice"])
    with client(api, local.secret) as c:
        assert c.get("/v1/me").status_code == 200
        assert tokens.revoke(local.id)
        assert c.get("/v1/me").status_code == 401, "a revoke in this process is seen at once"

    monkeypatch.setenv("GROUNDING_TOKEN_CACHE_S", "0")
    reset_settings()
    uncached = tokens.create(world["alice"])
    with client(api, uncached.secret) as c:
        assert c.get("/v1/me").status_code == 200
        revoke_elsewhere(uncached.id)
        assert c.get("/v1/me").status_code == 401, "0 turns the cache off"

    for bad in ("nan", "inf", "-1", "301"):  # nan/inf would never expire: refused, not cached
        monkeypatch.setenv("GROUNDING_TOKEN_CACHE_S", bad)
        reset_settings()
        with pytest.raises(InvalidArgument, match="GROUNDING_TOKEN_CACHE_S"):
            tokens.authenticate(tokens.create(world["alice"]).secret)

    # A cached token is not trusted past its own expiry.
    ending = tokens.Principal("alice", token_id="0" * 12, expires_at=dt.datetime.now(dt.timezone.utc))
    cache = tokens.CheckedTokens()
    cache.put("h", ending, 60)
    assert cache.get("h") is None


def test_bad_requests_are_problems_not_tracebacks(api, world):
    with client(api, world["tokens"]["alice"].secret) as c:
        for response in (
            c.post("/v1/search", json={"repo": world["public"], "query": "x", "k": 0}),
            c.post("/v1/search", json={"repo": world["public"], "query": "x", "colour": "blue"}),
            c.post("/v1/search", json={"repo": "../etc", "query": "x"}),
            c.post("/v1/ask", json={"question": "no repository"}),
            c.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"}),
            c.get("/v1/repos", params={"limit": 100000}),
        ):
            assert response.status_code in (404, 422), response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["type"].startswith("urn:grounding:error:")
            assert "Traceback" not in response.text
        assert c.get("/v1/nowhere").status_code == 404
        huge = c.post("/v1/complete", json={"repo": world["public"], "prefix": "x" * (2 << 20)})
        assert huge.status_code == 413 and huge.json()["status"] == 413

        def chunked():  # no Content-Length: counted as it arrives
            yield b'{"repo": "x", "query": "'
            for _ in range(40):
                yield b"y" * 65536
            yield b'"}'

        streamed = c.post("/v1/search", content=chunked(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and "larger than" in streamed.json()["detail"], streamed.text


def test_admin_grants_and_ingests_over_the_api(prefect_server, api, world, monkeypatch):
    from grounding.config import reset_settings

    new = world["payroll"] + "-new"
    source = git_repo(tree(world["tmp"] / "new", {"lib/tax.py": "def withhold_tax(amount):\n    return amount\n"}))
    with client(api, world["tokens"]["admin"].secret) as c:
        granted = c.post(f"/v1/repos/{world['payroll']}/grants", json={"principal": world["alice"]})
        assert (
            granted.status_code == 200
            and {"principal": f"user:{world['alice']}", "repo": world["payroll"]} in granted.json()
        )
        with client(api, world["tokens"]["alice"].secret) as alice:
            assert alice.post("/v1/search", json={"repo": world["payroll"], "query": "bonus"}).status_code == 200
        assert c.delete(f"/v1/repos/{world['payroll']}/grants/user:{world['alice']}").status_code == 200
        assert access.allowed_repos(world["alice"]) == [world["public"]]

        assert c.post(f"/v1/repos/{new}/ingest", json={}).status_code == 422  # a new repository needs a source
        for where in ("/etc", str(source), "file:///etc", "http://127.0.0.1:9/r.git", "git://127.0.0.1/r.git", "etc"):
            refused = c.post(f"/v1/repos/{new}/ingest", json={"source": where})
            assert refused.status_code == 422, refused.text
        monkeypatch.setenv("GROUNDING_INGEST_ROOTS", str(world["tmp"]))
        reset_settings()
        assert c.post(f"/v1/repos/{new}/ingest", json={"source": "/etc"}).status_code == 422
        started = c.post(f"/v1/repos/{new}/ingest", json={"source": str(source)})
        assert started.status_code == 202, started.text
        job = started.json()
        deadline = time.monotonic() + 120
        while job["status"] not in ("complete", "failed") and time.monotonic() < deadline:
            time.sleep(0.3)
            job = c.get(f"/v1/ingests/{job['job']}").json()
        assert job["status"] == "complete", job
    from grounding.db import get_engine

    with get_engine().begin() as conn:
        conn.execute(sa.text("DELETE FROM repositories WHERE name = :n"), {"n": new})


def test_rate_limit_per_token(world):
    from grounding.service.api import create_app

    with running(create_app(rate_limit=3)) as url, client(url, world["tokens"]["alice"].secret) as c:
        codes = [c.get("/v1/me").status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        limited = c.get("/v1/me")
        assert int(limited.headers["retry-after"]) >= 1
        with client(url, world["tokens"]["admin"].secret) as other:
            assert other.get("/v1/me").status_code == 200, "the limit is per token"


def test_openapi_documents_every_endpoint(api):
    paths = httpx.get(f"{api}/openapi.json").json()["paths"]
    for path in (
        "/v1/search",
        "/v1/ask",
        "/v1/complete",
        "/v1/repos",
        "/v1/repos/{name}",
        "/v1/chunks/{chunk_id}",
        "/v1/repos/{name}/ingest",
        "/v1/repos/{name}/grants",
    ):
        assert path in paths, path
    assert httpx.get(f"{api}/docs").status_code == 200


def test_token_cli(world, capsys):
    assert main(["token", "create", world["alice"], "--expires", "2d", "--label", "laptop"]) == 0
    out = capsys.readouterr().out
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("gr_") and tokens.authenticate(secret).user == world["alice"]
    made = tokens.authenticate(secret)
    assert made.expires_at - dt.datetime.now(dt.timezone.utc) > dt.timedelta(days=1, hours=23)
    assert main(["token", "list", world["alice"]]) == 0
    listed = capsys.readouterr().out
    assert made.token_id in listed and "laptop" in listed and secret not in listed
    assert main(["token", "revoke", made.token_id]) == 0
    with pytest.raises(Exception, match="credential"):
        tokens.authenticate(secret)
    assert main(["token", "create", world["alice"], "--expires", "yesterday"]) == 2
    assert "expires" in capsys.readouterr().err
    assert main(["token", "create", "group:ops"]) == 2


@contextlib.contextmanager
def jwks_server(public_jwk: dict):
    """An identity provider's key endpoint on loopback: /.well-known/openid-configuration and /jwks."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            base = f"http://127.0.0.1:{self.server.server_port}"
            body = {"/jwks": {"keys": [public_jwk]}, "/.well-known/openid-configuration": {"jwks_uri": f"{base}/jwks"}}
            found = body.get(self.path)
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(found or {}).encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_oidc_bearer_jwts_from_a_configured_issuer(world, monkeypatch):
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    from grounding.config import reset_settings
    from grounding.service.api import create_app

    key, other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    public = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    public.update(kid="k1", use="sig", alg="RS256")
    with jwks_server(public) as issuer:
        monkeypatch.setenv("GROUNDING_OIDC_ISSUER", issuer)
        monkeypatch.setenv("GROUNDING_OIDC_AUDIENCE", "grounding")
        reset_settings()
        now = int(time.time())
        claims = {"iss": issuer, "aud": "grounding", "exp": now + 300, "sub": world["alice"]}

        def signed(signer=key, **change):
            return jwt.encode({**claims, **change}, signer, algorithm="RS256", headers={"kid": "k1"})

        with running(create_app(rate_limit=0)) as url:
            good = client(url, signed()).post("/v1/search", json={"repo": world["public"], "query": "greet"})
            assert good.status_code == 200 and good.json()["hits"]
            me = client(url, signed()).get("/v1/me").json()
            expires = dt.datetime.fromisoformat(me.pop("expires_at").replace("Z", "+00:00"))
            assert me == {"user": world["alice"], "admin": False, "via": "oidc", "token_id": None}
            assert expires == dt.datetime.fromtimestamp(claims["exp"], dt.timezone.utc)
            denied = client(url, signed()).post("/v1/search", json={"repo": world["payroll"], "query": "bonus"})
            assert denied.status_code == 404, "a JWT user reads through the same grants"
            other_claim = client(url, signed(sub="someone-else", preferred_username=world["alice"])).get("/v1/me")
            assert other_claim.json()["user"] == "someone-else", "only the configured claim (sub) names the user"
            unsigned = jwt.encode(claims, None, algorithm="none")
            for bad in (
                signed(aud="someone-else"),
                signed(iss="http://127.0.0.1:1/evil"),
                signed(exp=now - 120),
                signed(signer=other),
                signed(sub="../../root"),
                signed(sub=None),
                signed(sub=f"user:{world['alice']}"),  # a principal, not a name
                signed(sub=f"group:{world['alice']}"),
                signed(exp=10**12),  # valid to PyJWT, past what a date holds
                unsigned,
                jwt.encode(claims, "a-guessed-shared-secret-of-32-bytes", algorithm="HS256", headers={"kid": "k1"}),
            ):
                assert client(url, bad).get("/v1/repos").status_code == 401, jwt.decode(
                    bad, options={"verify_signature": False}
                )
            monkeypatch.setenv("GROUNDING_OIDC_USER_CLAIM", "email")  # an email names a user once it is verified
            reset_settings()
            email = f"{world['alice']}@example.com"
            for verified, status in ((False, 401), ("false", 401), (True, 200), (None, 200)):
                token = signed(sub="x", email=email, **({} if verified is None else {"email_verified": verified}))
                me = client(url, token).get("/v1/me")
                assert me.status_code == status and (status == 401 or me.json()["user"] == email), (verified, me)


def test_owner_name_repositories_and_no_slash_redirects(api, world, hashing):
    nested = f"{world['public']}/tools"
    ingest(str(git_repo(tree(world["tmp"] / "nested", {"run.py": "def run_tool():\n    return 0\n"}))), name=nested,
           embedder=hashing)  # fmt: skip
    with client(api, world["tokens"]["admin"].secret) as admin:
        assert admin.post(f"/v1/repos/{nested}/grants", json={"principal": world["alice"]}).status_code == 200
        assert [g["repo"] for g in admin.get(f"/v1/repos/{nested}/grants").json()] == [nested]
    with client(api, world["tokens"]["alice"].secret) as c:
        detail = c.get(f"/v1/repos/{nested}")
        assert detail.status_code == 200 and detail.json()["name"] == nested
        assert nested in [r["name"] for r in c.get("/v1/repos").json()["items"]]
        slashed = c.get("/v1/me/", headers={"Host": "evil.example"})
        assert slashed.status_code == 404 and "location" not in slashed.headers


def test_a_search_crafted_to_burn_the_database_is_refused_or_stopped(api, world, monkeypatch):
    """Path globs are regexes Postgres compiles per row read: a reviewer's 3 KB query ran 19 s, 50 long globs
    7.7 s on a 3-chunk repository, and the backends kept running after the client left."""
    from grounding.config import reset_settings

    search = {"repo": world["public"], "query": "greet someone"}
    with client(api, world["tokens"]["alice"].secret) as c:
        started = time.monotonic()
        for body in (
            {**search, "query": "greet path:" + "**/" * 1000 + "x"},
            {**search, "filters": {"paths": ["**/" * 165 + f"q{i}" for i in range(50)]}},
            {**search, "filters": {"paths": ["*.py"] * 10, "exclude_paths": ["t/*"] * 7}},
        ):
            refused = c.post("/v1/search", json=body)
            assert refused.status_code == 422 and "at most" in refused.json()["detail"], refused.text
        assert time.monotonic() - started < 5

        monkeypatch.setenv("GROUNDING_SEARCH_TIMEOUT_S", "0.001")  # what a costly, allowed search meets
        reset_settings()
        globs = ["/".join(["**", f"d{i}"] * 30) + "/*.py" for i in range(16)]  # allowed: 16 of < 256 characters
        stopped = c.post("/v1/search", json={**search, "filters": {"paths": globs}})
        assert stopped.status_code == 503, stopped.text
        assert stopped.json()["type"].endswith("SearchTimeout") and "GROUNDING_SEARCH_TIMEOUT_S" in stopped.text
        monkeypatch.delenv("GROUNDING_SEARCH_TIMEOUT_S")
        reset_settings()
        assert c.post("/v1/search", json={**search, "filters": {"paths": globs}}).status_code == 200
        assert c.post("/v1/search", json=search).json()["hits"], "the pooled connection kept no timeout"
