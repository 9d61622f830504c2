"""The MCP server (`grounding mcp`): search_code, ask, read_span and list_repos for coding agents, over stdio or
streamable HTTP, on the official `mcp` SDK's MCPServer.

Over streamable HTTP every request carries `Authorization: Bearer TOKEN` (the HTTP API's tokens,
grounding.tokens), checked by the SDK's bearer middleware through `TokenVerifier` below: a request without a
valid one is answered 401 before it reaches MCP. A tool call acts for the user of the token on its own HTTP
request (the Starlette request the SDK hands the handler, whose `user` the middleware set), so nothing about
the caller is kept between calls or shared between sessions; the rate limit is per token, per tool call.
Over stdio the caller is GROUNDING_TOKEN's user, checked again at every call, or without it a trusted local
caller (user None), as on the command line.

A grounding error in a tool is an MCP tool error (isError) whose text says what to do; a repository the
caller may not read reads exactly as a missing one, as in the HTTP API. Every piece of code that comes back
is cited `path:start-end@commit`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Annotated

import anyio.to_thread
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field
from starlette.applications import Starlette

from grounding import db, store, tokens, validation
from grounding.config import get_settings
from grounding.errors import GroundingError, InvalidArgument, Unauthenticated
from grounding.service import api_models as m
from grounding.service.api import MAX_BODY_BYTES, answer_out, citation_out, public_error

log = logging.getLogger(__name__)

MAX_SPAN_LINES = 2000  # lines one read_span call may return
MAX_ASK_REPOS = 20  # repositories one ask may name, as in the HTTP API
INSTRUCTIONS = (
    "Answers about this company's code, cited to file and line. `list_repos` names the repositories you may "
    "read; `search_code` finds the chunks that match a query; `ask` answers a question with [n] citations; "
    "`read_span` reads lines of a file the index holds. Cite code as path:start-end@commit."
)
_READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


# --- results ---------------------------------------------------------------------------------------------


class SpanOut(BaseModel):
    repo: str
    path: str
    start_line: int
    end_line: int  # the last line returned: `end`, or the file's last line if it has fewer
    lines: int  # in the whole file
    commit: str | None
    text: str  # the lines as the index holds them, secrets redacted
    cite: str  # path:start-end@commit


class ReposOut(BaseModel):
    repos: list[m.RepoOut]
    note: str  # on what grounds these are the caller's


def _fence(text: str, language: str | None = None) -> str:
    """`text` as a Markdown code block whose fence no run of backticks inside it can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language or ''}\n{text.rstrip(chr(10))}\n{fence}"


def _cited(n: int, c: m.CitationOut) -> str:
    what = " ".join(p for p in (c.symbol, f"({c.kind})" if c.kind else None) if p)
    role = f" [{c.role}]" if c.role and c.role != "source" else ""
    return f"[{n}] {c.repo} {c.cite} {what}{role}".rstrip() + "\n" + _fence(c.snippet, c.language)


def _result(text: str, out: BaseModel) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=out.model_dump(mode="json"))


def error_text(err: Exception) -> str:
    """What a tool error says: as the HTTP API's problems say it (grounding.service.api.public_error)."""
    if not isinstance(err, GroundingError):
        log.error("an MCP tool failed", exc_info=err)
    kind, detail = public_error(err, listing="`list_repos`")
    return f"{kind}: {detail}"


def _error(err: Exception) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=error_text(err))], is_error=True)


# --- who is calling ----------------------------------------------------------------------------------------


class TokenVerifier:
    """The SDK's TokenVerifier over grounding's API tokens (and OIDC JWTs where configured).

    `client_id` is what the rate limit and the SDK's session ownership key on (the token), `subject` the
    user the calls act for.
    """

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            who = await anyio.to_thread.run_sync(tokens.authenticate, token)
        except Unauthenticated:
            return None
        return AccessToken(
            token=token,
            client_id=who.token_id or f"{who.via}:{who.user}",
            scopes=[],
            expires_at=None if who.expires_at is None else int(who.expires_at.timestamp()),
            subject=who.user,
            claims={"admin": who.admin, "via": who.via},
        )


def stdio_user(token: str | None) -> str | None:
    """The user a stdio server acts for: GROUNDING_TOKEN's, or None (a trusted local caller) without one."""
    if token is None:
        return None
    try:
        return tokens.authenticate(token).user
    except Unauthenticated:
        raise Unauthenticated(
            "GROUNDING_TOKEN is not a valid token (malformed, unknown, expired or revoked): make one with "
            "`grounding token create USER`, or unset it to serve as a trusted local caller"
        ) from None


def _stdio_caller(token: str | None) -> Callable[[Context], str | None]:
    def caller(ctx: Context) -> str | None:
        return stdio_user(token)  # again at every call: a token revoked or expired since the start stops here

    return caller


def _http_caller(limiter: tokens.RateLimiter) -> Callable[[Context], str | None]:
    def caller(ctx: Context) -> str | None:
        request = ctx.request_context.request
        user = request.scope.get("user") if request is not None else None
        if not isinstance(user, AuthenticatedUser) or not user.access_token.subject:
            raise Unauthenticated(tokens.REJECTED)  # the middleware lets none through; never act for nobody
        limiter.check(user.access_token.client_id)
        return user.access_token.subject

    return caller


# --- the server --------------------------------------------------------------------------------------------


def create_server(*, http: bool, token: str | None = None, rate_limit: int | None = None) -> MCPServer:
    """The MCP server with its four tools; `http` puts every request behind a bearer token (see module doc).

    Over stdio, `token` (GROUNDING_TOKEN) is the caller's, authenticated at every call; None is a trusted
    local caller. `rate_limit` (tool calls a minute per token, HTTP only) overrides GROUNDING_API_RATE_LIMIT.
    """
    auth = {}
    if http:
        limiter = tokens.RateLimiter(get_settings().api_rate_limit if rate_limit is None else rate_limit)
        caller = _http_caller(limiter)
        auth = {
            "token_verifier": TokenVerifier(),
            # The SDK asks for an OAuth issuer; API tokens have none, and without resource_server_url the
            # server publishes no OAuth metadata, so this URL is never shown to a client.
            "auth": AuthSettings(issuer_url="http://127.0.0.1", resource_server_url=None),
        }
    else:
        caller = _stdio_caller(token)
    server = MCPServer("grounding", instructions=INSTRUCTIONS, log_level="WARNING", **auth)

    def call(ctx: Context, tool: Callable[[str | None], tuple[str, BaseModel]]) -> CallToolResult:
        try:
            return _result(*tool(caller(ctx)))
        except Exception as err:  # every failure is a tool error; a bug's text stays in the server's log
            return _error(err)

    @server.tool(annotations=_READ_ONLY)
    def search_code(
        repo: Annotated[str, Field(description="a repository name, as list_repos gives it")],
        query: Annotated[str, Field(description="what to find; may hold inline filters: path:src/** lang:go")],
        ctx: Context,
        k: Annotated[int, Field(ge=1, le=100, description="how many chunks (1-100)")] = 8,
        filters: Annotated[
            m.FiltersIn | None,
            Field(
                description="paths and exclude_paths: .gitignore-style globs; languages (python, go, ...); kinds "
                "(function, method, class, ...); roles (source, test, docs, example, benchmark, config, ...)"
            ),
        ] = None,
    ) -> Annotated[CallToolResult, m.SearchOut]:
        """The k chunks of one repository's code that best match a query, each cited path:start-end@commit."""
        from grounding.search.filters import SearchFilters
        from grounding.search.retrieve import search

        def run(user: str | None) -> tuple[str, BaseModel]:
            chosen = None if filters is None else SearchFilters(**filters.model_dump())
            hits = search(repo, query, k=k, filters=chosen, user=user)
            out = m.SearchOut(
                repo=repo,
                hits=[
                    m.HitOut(
                        chunk_id=h.chunk_id,
                        score=h.score,
                        index_version=h.index_version,
                        citation=citation_out(h.citation),
                    )
                    for h in hits
                ],
            )
            cited = [_cited(n, h.citation) for n, h in enumerate(out.hits, 1)]
            return "\n\n".join(cited) or f"No code in {repo!r} matches this query.", out

        return call(ctx, run)

    @server.tool(annotations=_READ_ONLY)
    def ask(
        repo: Annotated[str | list[str], Field(description="a repository name, or a list of names")],
        question: Annotated[str, Field(description="the question; may hold inline filters: role:test")],
        ctx: Context,
        k: Annotated[int, Field(ge=1, le=50, description="how many pieces of code to answer from (1-50)")] = 5,
    ) -> Annotated[CallToolResult, m.AnswerOut]:
        """An answer from the repositories' own code, each claim ending in [n], citing citation n."""
        from grounding.answer.ask import ask as answer

        def run(user: str | None) -> tuple[str, BaseModel]:
            if isinstance(repo, list) and len(repo) > MAX_ASK_REPOS:
                raise InvalidArgument(f"ask names at most {MAX_ASK_REPOS} repositories, not {len(repo)}")
            out = answer_out(answer(repo, question, k=k, user=user))
            cited = [_cited(n, c) for n, c in enumerate(out.citations, 1)]
            return "\n\n".join([out.text, *cited]), out

        return call(ctx, run)

    @server.tool(annotations=_READ_ONLY)
    def read_span(
        repo: Annotated[str, Field(description="a repository name")],
        path: Annotated[str, Field(description="a file's path in the repository, as a citation gives it")],
        start: Annotated[int, Field(description="first line, from 1")],
        end: Annotated[int, Field(description=f"last line, at most {MAX_SPAN_LINES - 1} after start")],
        ctx: Context,
    ) -> Annotated[CallToolResult, SpanOut]:
        """Lines start..end of a file the repository's index holds, as indexed (secrets redacted), cited."""
        from grounding.answer.completion import prefix_at

        def run(user: str | None) -> tuple[str, BaseModel]:
            name = validation.repo_path(path)
            first = validation.count(start, "start", maximum=10_000_000)
            last = validation.count(end, "end", maximum=10_000_000)
            if last < first:
                raise InvalidArgument(f"end ({last}) must not be before start ({first})")
            if last - first + 1 > MAX_SPAN_LINES:
                raise InvalidArgument(
                    f"read_span returns at most {MAX_SPAN_LINES} lines a call, not {last - first + 1}: "
                    f"read {first}-{first + MAX_SPAN_LINES - 1}, then go on from there"
                )
            # Access, the index's own file list and the on-disk hash are all prefix_at's to check.
            lines = prefix_at(repo, name, None, user=user).splitlines(keepends=True)
            if first > len(lines):
                raise InvalidArgument(f"{name} has {len(lines)} lines; line {first} is outside it")
            last = min(last, len(lines))
            with db.get_engine().connect() as conn:
                _, commit = store.current_snapshot(conn, store.repo_id(conn, repo))
            cite = f"{name}:{first}-{last}@{commit or 'worktree'}"
            text = "".join(lines[first - 1 : last])
            out = SpanOut(
                repo=repo,
                path=name,
                start_line=first,
                end_line=last,
                lines=len(lines),
                commit=commit,
                text=text,
                cite=cite,
            )
            return f"{repo} {cite}\n{_fence(text)}", out

        return call(ctx, run)

    @server.tool(annotations=_READ_ONLY)
    def list_repos(ctx: Context) -> Annotated[CallToolResult, ReposOut]:
        """The repositories you may read: name, commit, files, chunks and how the last ingest went."""
        from grounding.service.status import repo_scope

        def run(user: str | None) -> tuple[str, BaseModel]:
            scope = repo_scope(user)
            repos = sorted(scope.repos, key=lambda r: r.name)
            out = ReposOut(repos=[m.repo_out(r) for r in repos], note=scope.note)
            rows = [
                f"{r.name}  {(r.commit or 'worktree')[:12]}  {r.files} files  {r.chunks} chunks  "
                f"last ingest {r.last_status or 'none'}"
                for r in out.repos
            ]
            return "\n".join([scope.note, *rows]), out

        return call(ctx, run)

    return server


def create_http_app(*, host: str = "127.0.0.1", rate_limit: int | None = None) -> Starlette:
    """The streamable HTTP app, at /mcp; bound to loopback, the SDK also refuses other Host headers."""
    server = create_server(http=True, rate_limit=rate_limit)
    return server.streamable_http_app(host=host, max_request_body_size=MAX_BODY_BYTES)
