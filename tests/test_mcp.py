"""The MCP server with the SDK's own client: over stdio (`grounding mcp` as a subprocess) and over streamable HTTP
(uvicorn on loopback), every tool as the token's user; the access walk (a user granted one of two repositories
gets nothing of the other from any tool, and read_span reads only what the index holds); bad tokens get 401."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import string
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
import sqlalchemy as sa
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from grounding import access, db, tokens
from grounding.index.embed import HashingEmbedder
from grounding.index.ingest import ingest
from tests.conftest import drop_repos, git, git_repo, module_environment, running
from tests.conftest import write_tree as tree

ROOT = Path(__file__).resolve().parents[1]
GITHUB_TOKEN = "ghp_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(36))
PUBLIC = {
    "app/greet.py": "def greet(name):\n    return f'hello {name}'\n\n\ndef farewell(name):\n    return 'bye'\n",
    "app/settings.py": f'GITHUB_TOKEN = "{GITHUB_TOKEN}"\nRETRIES = 3\n',
    ".env": "PAYROLL_DB_PASSWORD=hunter2\n",  # committed, but ingest never indexes a .env
}
PAYROLL = {"salaries/compute_bonus.py": "def compute_payroll_bonus(salary):\n    return salary * 0.42\n"}
SECRET_WORDS = ("payroll", "bonus", "salar", "0.42", "hunter2")
TOOLS = {"search_code", "ask", "read_span", "list_repos"}


@pytest.fixture(scope="module")
def world(database_url, tmp_path_factory):
    """`public` granted to alice, `payroll` to nobody (ingested once for the module), and their tokens."""
    tmp = tmp_path_factory.mktemp("mcp")
    tag = uuid.uuid4().hex[:8]
    with module_environment(GROUNDING_DATABASE_URL=database_url, GROUNDING_HOME=str(tmp / "home")):
        names = {"public": f"t-mcp-{tag}-public", "payroll": f"t-mcp-{tag}-payroll"}
        public = git_repo(tree(tmp / "public", PUBLIC))
        embedder = HashingEmbedder(64)
        ingest(str(public), name=names["public"], embedder=embedder)
        ingest(str(git_repo(tree(tmp / "payroll", PAYROLL))), name=names["payroll"], embedder=embedder)
        (public / "app" / "untracked.py").write_text("def not_indexed():\n    return 1\n")
        alice, root = f"alice-{tag}", f"root-{tag}"
        access.grant(alice, names["public"])
        made = {"alice": tokens.create(alice), "root": tokens.create(root, admin=True)}
        yield {
            **names,
            "alice": alice,
            "root": root,
            "tokens": made,
            "commit": git(public, "rev-parse", "HEAD"),
            "url": database_url,
        }
        drop_repos(f"t-mcp-{tag}-%")
        with db.get_engine().begin() as conn:
            conn.execute(sa.text("DELETE FROM api_tokens WHERE user_name IN (:a, :r)"), {"a": alice, "r": root})


@pytest.fixture(scope="module")
def mcp_url(world):
    from grounding.service.mcp import create_http_app

    with running(create_http_app(rate_limit=0)) as url:
        yield f"{url}/mcp"


@contextlib.asynccontextmanager
async def over_http(url: str, token: str, mode: str = "auto"):
    """A client of the server at `url`; mode `legacy` speaks the initialize handshake of today's IDE clients."""
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


@contextlib.asynccontextmanager
async def over_stdio(world, token: str | None, errlog):
    env = {
        "GROUNDING_DATABASE_URL": world["url"],
        "GROUNDING_HOME": os.environ["GROUNDING_HOME"],
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **({"GROUNDING_TOKEN": token} if token is not None else {}),
    }
    params = StdioServerParameters(command=sys.executable, args=["-m", "grounding.cli", "mcp"], env=env, cwd=ROOT)
    async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=60) as client:
        yield client


def text(result) -> str:
    return "\n".join(c.text for c in result.content)


def cites(result) -> list[str]:
    found = result.structured_content
    return [c["cite"] for c in found.get("citations") or [h["citation"] for h in found.get("hits", [])]]


def leaks(said: str, world, *, echoed: str = "") -> list[str]:
    """Words of the payroll repository (and of secrets) in what a tool said; `echoed`, the name asked for, aside."""
    said = said.lower().replace(echoed.lower(), "") if echoed else said.lower()
    return [w for w in (*SECRET_WORDS, world["payroll"].lower(), GITHUB_TOKEN.lower()) if w in said]


async def every_tool(client, world) -> None:
    """Each tool once on `public`, as alice: code comes back cited path:start-end@commit."""
    public, commit = world["public"], world["commit"]
    assert {t.name for t in (await client.list_tools()).tools} == TOOLS

    found = await client.call_tool("search_code", {"repo": public, "query": "greet someone by name", "k": 3})
    assert not found.is_error, text(found)
    first = found.structured_content["hits"][0]["citation"]
    assert first["path"] == "app/greet.py" and first["cite"] == f"app/greet.py:1-2@{commit}"
    assert f"app/greet.py:1-2@{commit}" in text(found) and "def greet" in text(found)
    filtered = await client.call_tool(
        "search_code", {"repo": public, "query": "retries", "filters": {"paths": ["app/settings.py"]}}
    )
    assert {h["citation"]["path"] for h in filtered.structured_content["hits"]} == {"app/settings.py"}

    answer = await client.call_tool("ask", {"repo": public, "question": "how does greet say hello?"})
    assert not answer.is_error, text(answer)
    assert cites(answer) and all(re.fullmatch(rf"[\w./-]+:\d+-\d+@{commit}", c) for c in cites(answer))
    assert answer.structured_content["citations"][0]["path"] == "app/greet.py" and "[1]" in text(answer)

    span = await client.call_tool("read_span", {"repo": public, "path": "app/greet.py", "start": 5, "end": 99})
    assert not span.is_error, text(span)
    assert span.structured_content["text"] == "def farewell(name):\n    return 'bye'\n"
    assert span.structured_content["cite"] == f"app/greet.py:5-6@{commit}" and span.structured_content["lines"] == 6
    redacted = await client.call_tool("read_span", {"repo": public, "path": "app/settings.py", "start": 1, "end": 2})
    assert "[REDACTED:" in text(redacted) and GITHUB_TOKEN not in text(redacted) + str(redacted.structured_content)

    repos = await client.call_tool("list_repos", {})
    assert [r["name"] for r in repos.structured_content["repos"]] == [public]
    assert repos.structured_content["repos"][0]["commit"] == commit and public in text(repos)
    assert "source" not in repos.structured_content["repos"][0]  # a server path or URL is an admin's business


def test_stdio_serves_every_tool_as_the_token_user(world, tmp_path):
    async def main():
        with open(tmp_path / "stderr", "w") as errlog:
            async with over_stdio(world, world["tokens"]["alice"].secret, errlog) as client:
                await every_tool(client, world)
                denied = await client.call_tool("search_code", {"repo": world["payroll"], "query": "bonus"})
                assert denied.is_error and not leaks(text(denied), world, echoed=world["payroll"])

    anyio.run(main)
    assert world["alice"] in (tmp_path / "stderr").read_text(), "the server says whom it acts for, on stderr"


def test_stdio_without_a_token_is_a_trusted_caller_and_a_bad_token_does_not_start(world, tmp_path):
    async def main():
        with open(tmp_path / "stderr", "w") as errlog:
            async with over_stdio(world, None, errlog) as client:
                names = [r["name"] for r in (await client.call_tool("list_repos", {})).structured_content["repos"]]
                assert {world["public"], world["payroll"]} <= set(names)
                missing = world["payroll"] + "-nope"
                absent = await client.call_tool("read_span", {"repo": missing, "path": "a.py", "start": 1, "end": 1})
                assert absent.is_error and text(absent).startswith(f"RepoNotFound: no repository {missing!r} that")
                assert world["public"] not in text(absent), "RepoNotFound's own message lists every repository"

    anyio.run(main)
    env = {**os.environ, "GROUNDING_DATABASE_URL": world["url"]}
    started = [  # unknown; and set but empty, which is no trusted caller: side by side, to save a start-up
        subprocess.Popen(
            [sys.executable, "-m", "grounding.cli", "mcp"],
            env={**env, "GROUNDING_TOKEN": bad},
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for bad in ("gr_000000000000_" + "A" * 43, "")
    ]
    for process in started:
        out, err = process.communicate(timeout=120)
        assert process.returncode != 0 and out == "", out
        assert len(err.strip().splitlines()) == 1 and "GROUNDING_TOKEN is not a valid token" in err, err


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_http_serves_every_tool_as_the_token_user(world, mcp_url, mode):
    async def main():
        async with over_http(mcp_url, world["tokens"]["alice"].secret, mode) as client:
            await every_tool(client, world)

    anyio.run(main)


def test_nothing_of_an_ungranted_repository_comes_back_from_any_tool(world, mcp_url):
    """The access walk: alice is granted `public` only; `payroll` must read exactly as a missing repository."""
    public, payroll, missing = world["public"], world["payroll"], world["payroll"] + "-nope"
    calls = {
        "search": lambda name: ("search_code", {"repo": name, "query": "compute payroll bonus"}),
        "ask": lambda name: ("ask", {"repo": name, "question": "how is the bonus computed?"}),
        "ask two": lambda name: ("ask", {"repo": [public, name], "question": "bonus?"}),
        "read": lambda name: ("read_span", {"repo": name, "path": "salaries/compute_bonus.py", "start": 1, "end": 2}),
    }

    async def main():
        async with over_http(mcp_url, world["tokens"]["alice"].secret) as client:
            for what, call in calls.items():
                denied, absent = await client.call_tool(*call(payroll)), await client.call_tool(*call(missing))
                assert denied.is_error and absent.is_error, what
                assert denied.structured_content is None and absent.structured_content is None, what
                assert text(denied).replace(payroll, "X") == text(absent).replace(missing, "X"), what
                assert text(denied).startswith("RepoNotFound: no repository") and "Traceback" not in text(denied)
                assert not leaks(text(denied), world, echoed=payroll), (what, text(denied))
                assert not leaks(text(absent), world, echoed=missing), (what, text(absent))
            listed = await client.call_tool("list_repos", {})
            assert [r["name"] for r in listed.structured_content["repos"]] == [public] and payroll not in text(listed)

            for path in (
                ".env",
                "app/untracked.py",
                "../payroll/salaries/compute_bonus.py",
                "/etc/passwd",
                ".git/config",
            ):
                refused = await client.call_tool("read_span", {"repo": public, "path": path, "start": 1, "end": 5})
                assert refused.is_error and re.match(r"(SourceNotFound|InvalidArgument): ", text(refused)), path
                assert not leaks(text(refused), world, echoed=path), (path, text(refused))
                assert "not_indexed" not in text(refused) and "hunter2" not in text(refused), path
            for start, end in ((0, 3), (4, 2), (1, 2001), (50, 60)):
                bad = await client.call_tool(
                    "read_span", {"repo": public, "path": "app/greet.py", "start": start, "end": end}
                )
                assert bad.is_error and text(bad).startswith("InvalidArgument: "), (start, end, text(bad))

        async with over_http(mcp_url, world["tokens"]["root"].secret) as admin:
            found = await admin.call_tool("search_code", {"repo": payroll, "query": "bonus"})
            assert found.is_error and not leaks(text(found), world, echoed=payroll), "an admin reads through grants too"

    anyio.run(main)
    assert access.allowed_repos(world["alice"]) == [public]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_concurrent_sessions_each_act_for_their_own_token(world, mcp_url, mode):
    seen: dict[str, list] = {"alice": [], "root": []}

    async def session(who: str):
        async with over_http(mcp_url, world["tokens"][who].secret, mode) as client:
            for _ in range(4):
                listed = await client.call_tool("list_repos", {})
                found = await client.call_tool("search_code", {"repo": world["public"], "query": "greet"})
                seen[who].append(([r["name"] for r in listed.structured_content["repos"]], found.is_error))
                await anyio.sleep(0)

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(session, "alice")
            tg.start_soon(session, "root")

    anyio.run(main)
    assert seen["alice"] == [([world["public"]], False)] * 4
    assert all(world["public"] not in names and error for names, error in seen["root"]), seen["root"]


def test_expired_revoked_malformed_and_missing_tokens_get_401(world, mcp_url):
    expired = tokens.create(world["alice"], expires="1m")
    with db.get_engine().begin() as conn:
        conn.execute(
            sa.text("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = :i"), {"i": expired.id}
        )
    revoked = tokens.create(world["alice"])
    assert tokens.revoke(revoked.id)
    good = world["tokens"]["alice"].secret
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    headers = {"Accept": "application/json, text/event-stream"}
    for auth in (
        *(f"Bearer {t}" for t in (expired.secret, revoked.secret, forged, "gr_nothex_x", "not-a-token", "a.b.c")),
        f"Basic {good}",
        None,
    ):
        sent = {**headers, **({"Authorization": auth} if auth else {})}
        for response in (httpx.post(mcp_url, json=initialize, headers=sent), httpx.get(mcp_url, headers=sent)):
            assert response.status_code == 401, (auth, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
    ok = httpx.post(mcp_url, json=initialize, headers={**headers, "Authorization": f"Bearer {good}"})
    assert ok.status_code == 200, ok.text


def test_a_token_revoked_mid_session_stops_at_the_next_call(world, mcp_url):
    from mcp.shared.exceptions import MCPError

    fresh = tokens.create(world["alice"])

    async def main():
        async with over_http(mcp_url, fresh.secret) as client:
            assert not (await client.call_tool("list_repos", {})).is_error
            assert tokens.revoke(fresh.id)
            with anyio.fail_after(20), pytest.raises(MCPError):
                await client.call_tool("list_repos", {})

    anyio.run(main)


def test_tool_calls_are_rate_limited_per_token(world):
    from grounding.service.mcp import create_http_app

    async def main():
        with running(create_http_app(rate_limit=2)) as url:
            async with over_http(f"{url}/mcp", world["tokens"]["alice"].secret) as client:
                said = [await client.call_tool("list_repos", {}) for _ in range(3)]
                assert [r.is_error for r in said] == [False, False, True]
                assert text(said[2]).startswith("RateLimited: too many requests for this token; retry in")
            async with over_http(f"{url}/mcp", world["tokens"]["root"].secret) as other:
                assert not (await other.call_tool("list_repos", {})).is_error, "the limit is per token"

    anyio.run(main)
