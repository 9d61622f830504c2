"""The HTTP API (`grounding api`): search, ask (streamed as server-sent events), complete, repositories,
chunks, ingest, deletion and grants, for internal apps and IDE assistants.

Every request carries `Authorization: Bearer TOKEN` (grounding.tokens: an API token, or an OIDC JWT where
configured) and acts for that token's user: reads go through the same `authorize` as the Python API, and
a repository the user may not read answers 404 exactly as a missing one does. Ingest, deletion and grants
need an admin token. Errors are application/problem+json (RFC 9457) whose `type` names the grounding.errors class.
Request models live in api_models.py.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from grounding import access, db, store, tokens, validation
from grounding.config import get_settings
from grounding.errors import (
    AccessDenied,
    AdminRequired,
    DatabaseUnavailable,
    GeneratorUnavailable,
    GroundingError,
    IngestBusy,
    InvalidArgument,
    NotIndexed,
    RateLimited,
    RepoNotFound,
    SearchTimeout,
    SourceConflict,
    SourceNotFound,
    Unauthenticated,
)
from grounding.records import Answer, Citation
from grounding.service import api_models as m

log = logging.getLogger(__name__)

API_VERSION = "v1"
MAX_BODY_BYTES = 1 << 20  # the largest request body read (a completion prefix is at most 200,000 characters)
_STATUS = (  # most specific first
    (Unauthenticated, 401),
    (AdminRequired, 403),
    (AccessDenied, 404),
    (RepoNotFound, 404),
    (SourceNotFound, 404),
    (RateLimited, 429),
    (InvalidArgument, 422),
    (NotIndexed, 409),
    (IngestBusy, 409),
    (SourceConflict, 409),
    (GeneratorUnavailable, 503),
    (DatabaseUnavailable, 503),
    (SearchTimeout, 503),
)


def public_error(err: Exception, *, listing: str = "`GET /v1/repos`") -> tuple[str, str]:
    """(kind, detail) of an error as a caller may read it: AccessDenied and RepoNotFound alike (RepoNotFound's
    own message lists every repository), a generator's failure without the server it names, a bug as only
    that it happened (the caller logs it). `listing` is where the caller finds its repositories."""
    if isinstance(err, (AccessDenied, RepoNotFound)):
        names = ", ".join(repr(r) for r in (err.repos if isinstance(err, AccessDenied) else [err.name]))
        return "RepoNotFound", f"no repository {names} that you may read; {listing} lists yours"
    if isinstance(err, GeneratorUnavailable):
        return "GeneratorUnavailable", "the answer generator is unavailable; the server's log says why"
    if isinstance(err, GroundingError):
        return type(err).__name__, str(err)
    return "InternalError", "the server failed to answer; its log says why"


def problem(err: Exception, *, status: int | None = None) -> JSONResponse:
    """The problem+json response for a grounding error (AccessDenied and RepoNotFound read alike)."""
    fallback = 400 if isinstance(err, GroundingError) else 500
    status = status or next((code for kind, code in _STATUS if isinstance(err, kind)), fallback)
    kind, detail = public_error(err)
    body = {"type": f"urn:grounding:error:{kind}", "title": kind, "status": status, "detail": detail}
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="grounding"'
    if isinstance(err, RateLimited):
        headers["Retry-After"] = str(max(1, int(err.retry_after + 0.999)))
    return JSONResponse(body, status_code=status, headers=headers, media_type="application/problem+json")


class BodyLimit:
    """Refuse a request whose body is larger than MAX_BODY_BYTES, by its Content-Length or as it streams in.

    Plain ASGI, not BaseHTTPMiddleware: that one costs every request a task and a copy of the response.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = problem(InvalidArgument(f"the request body is larger than {MAX_BODY_BYTES} bytes"), status=413)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return await too_big(scope, receive, send)
        body, more = [], True
        while more:  # read it all first (at most MAX_BODY_BYTES), so that a body without a length is refused too
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
            if sum(map(len, body)) > MAX_BODY_BYTES:
                return await too_big(scope, receive, send)
        whole = {"type": "http.request", "body": b"".join(body), "more_body": False}

        async def replay():
            nonlocal whole
            if whole is not None:
                message, whole = whole, None
                return message
            return await receive()

        await self.app(scope, replay, send)


def network_source(source: str) -> str:
    """What an ingest asked for over the network may read: a git URL over https or ssh (`user@host:path`),
    or a directory under one of GROUNDING_INGEST_ROOTS. Plain http, git:// and file:// are refused: their
    bytes (or credentials) travel in clear or come from the server's own disk."""
    from grounding.index import sources

    if sources.is_git_url(source):
        sources.check_git_url(source)
        scheme = source.split("://", 1)[0].lower() if "://" in source else "ssh"
        if scheme not in ("https", "ssh"):
            raise InvalidArgument(
                f"over the API a git URL is https://, ssh:// or user@host:path, not {scheme}://; "
                "an administrator can ingest others with the `grounding ingest` command"
            )
        return source
    roots = get_settings().ingest_roots
    path = Path(source).expanduser()
    resolved = path.resolve() if path.is_absolute() else None
    if resolved is None or not any(resolved == r or resolved.is_relative_to(r) for r in roots):
        allowed = ", ".join(str(r) for r in roots) if roots else "none is set"
        raise InvalidArgument(
            f"{source!r} is not a directory the API may read: it must be an absolute path under "
            f"GROUNDING_INGEST_ROOTS ({allowed}), or a git URL"
        )
    return str(resolved)


def in_thread(endpoint):
    """A blocking endpoint as a coroutine that runs it in one worker thread. FastAPI runs a plain `def` endpoint
    in a thread too, but then validates its return value in a second one: two hops a request, ~1 ms here."""

    @functools.wraps(endpoint)  # FastAPI reads the parameters through __wrapped__
    async def run(*args, **kwargs):
        return await run_in_threadpool(endpoint, *args, **kwargs)

    return run


def citation_out(c: Citation) -> m.CitationOut:
    return m.CitationOut(
        repo=c.repo,
        path=c.path,
        start_line=c.start_line,
        end_line=c.end_line,
        commit=c.commit,
        score=c.score,
        snippet=c.snippet,
        symbol=c.symbol,
        kind=c.kind,
        language=c.language,
        role=c.role,
        cite=f"{c.path}:{c.start_line}-{c.end_line}@{c.commit or 'worktree'}",
    )


def answer_out(a: Answer) -> m.AnswerOut:
    return m.AnswerOut(
        question=a.question,
        text=a.text,
        backend=a.backend,
        repos=list(a.repos),
        citations=[citation_out(c) for c in a.citations],
    )


def create_app(*, rate_limit: int | None = None) -> FastAPI:
    """The API as an ASGI app; `rate_limit` (requests a minute per token) overrides GROUNDING_API_RATE_LIMIT."""
    limiter = tokens.RateLimiter(get_settings().api_rate_limit if rate_limit is None else rate_limit)
    app = FastAPI(
        title="grounding",
        version=API_VERSION,
        description="Answers about a company's code, cited to file and line. Send `Authorization: Bearer TOKEN`.",
        docs_url="/docs",
        openapi_url="/openapi.json",
        redirect_slashes=False,  # a redirect would echo the Host header into Location, token and all
    )

    app.add_middleware(BodyLimit)

    @app.exception_handler(GroundingError)
    async def _grounding_error(request: Request, err: GroundingError):
        return problem(err)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()[:5])
        return problem(InvalidArgument(f"the request is not valid: {where}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        body = {"type": "about:blank", "title": str(err.detail), "status": err.status_code, "detail": str(err.detail)}
        return JSONResponse(body, status_code=err.status_code, media_type="application/problem+json")

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return problem(err)

    def login(credential: str | None, *, admin: bool = False) -> tokens.Principal:
        """The caller, in the endpoint's own worker thread (a sync dependency would cost a second thread hop)."""
        who = tokens.authenticate(credential)
        limiter.check(who.token_id or f"{who.via}:{who.user}")
        if admin and not who.admin:
            raise AdminRequired("this needs an admin token (`grounding token create USER --admin`)")
        return who

    @app.get("/v1/me", response_model=m.MeOut, tags=["auth"])
    @in_thread
    def me(credential: Credential):
        """Who the token acts for."""
        who = login(credential)
        return m.MeOut(user=who.user, admin=who.admin, via=who.via, token_id=who.token_id, expires_at=who.expires_at)

    @app.post("/v1/search", response_model=m.SearchOut, tags=["retrieval"])
    @in_thread
    def search(body: m.SearchIn, credential: Credential):
        """The k best chunks of one repository for a query, each with its citation."""
        who = login(credential)
        from grounding.search.retrieve import search as run

        hits = run(
            body.repo,
            body.query,
            k=body.k,
            mode=body.mode,
            filters=body.search_filters(),
            rerank=body.rerank,
            user=who.user,
        )
        return m.SearchOut(
            repo=body.repo,
            hits=[
                m.HitOut(
                    chunk_id=h.chunk_id, score=h.score, index_version=h.index_version, citation=citation_out(h.citation)
                )
                for h in hits
            ],
        )

    @app.post("/v1/ask", response_model=m.AnswerOut, tags=["answers"])
    @in_thread
    def ask(body: m.AskIn, request: Request, credential: Credential):
        """An answer cited [n] to the code it rests on; `stream` (or `Accept: text/event-stream`) sends
        `delta` events as it is written, then one `answer` event (an `error` event if it fails midway)."""
        who = login(credential)
        from grounding.answer.ask import ask_stream

        stream = body.stream or "text/event-stream" in request.headers.get("accept", "")
        pieces = ask_stream(body.repo_names(), body.question, k=body.k, user=who.user, filters=body.search_filters())
        first = next(pieces)  # validation, access and retrieval happen here: their errors are plain problems
        if not stream:
            answer = first
            for answer in pieces:
                pass
            return answer_out(answer)
        return StreamingResponse(
            _events(first, pieces), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    @app.post("/v1/complete", response_model=m.CompletionOut, tags=["answers"])
    @in_thread
    def complete(body: m.CompleteIn, credential: Credential):
        """Continue code with the repository's RETRO model, retrieving from its own index."""
        who = login(credential)
        from grounding.answer.completion import complete as run

        c = run(
            body.repo,
            body.prefix,
            max_new_tokens=body.max_new_tokens,
            temperature=body.temperature,
            path=body.path,
            seed=body.seed,
            user=who.user,
        )
        return m.CompletionOut(
            repo=body.repo,
            text=c.text,
            tokens=c.tokens,
            seconds=c.seconds,
            neighbours=[citation_out(n) for n in c.citations],
        )

    @app.get("/v1/repos", response_model=m.RepoPage, tags=["repositories"])
    @in_thread
    def repos(
        credential: Credential,
        limit: int = Query(100, ge=1, le=500),
        cursor: str | None = Query(None, max_length=200, description="next_cursor of the previous page"),
    ):
        """The repositories the caller may read, by name, a page at a time."""
        who = login(credential)
        from grounding.service.status import repo_scope

        names = sorted(repo_scope(who.user).repos, key=lambda r: r.name)
        after = [r for r in names if cursor is None or r.name > cursor]
        page = after[:limit]
        return m.RepoPage(
            items=[m.repo_out(r) for r in page], next_cursor=page[-1].name if len(after) > limit else None
        )

    @app.get("/v1/chunks/{chunk_id}", response_model=m.ChunkOut, tags=["retrieval"])
    @in_thread
    def chunk(chunk_id: int, credential: Credential):
        """One indexed chunk, as stored (secrets redacted), if its repository is the caller's to read."""
        who = login(credential)
        chunk_id = validation.count(chunk_id, "chunk id", maximum=2**63 - 1)
        with db.get_engine().connect() as conn:
            row = store.visible_chunk(conn, chunk_id)
        gone = SourceNotFound(f"no chunk {chunk_id} that you may read")
        if row is None:
            raise gone
        try:
            access.authorize(who.user, [row["repo"]])
        except AccessDenied:
            raise gone from None  # the same answer as a chunk that does not exist
        return m.ChunkOut(
            id=chunk_id,
            **row,
            cite=f"{row['path']}:{row['start_line']}-{row['end_line']}@{row['commit'] or 'worktree'}",
        )

    @app.post("/v1/repos/{name:path}/ingest", response_model=m.IngestJobOut, status_code=202, tags=["admin"])
    @in_thread
    def ingest(name: str, body: m.IngestIn, credential: Credential):
        """Ingest a repository (admin): on the `ingest-repo` Prefect deployment when there is one, else here."""
        who = login(credential, admin=True)
        from grounding.service import jobs

        name = validation.repo_name(name)
        source = None if body.source is None else network_source(body.source)
        registered = None
        if source is None:
            with db.get_engine().connect() as conn:
                record = store.repo_record(conn, name)
            if record is None:
                raise InvalidArgument(
                    f"repository {name!r} is new: give the `source` (a path or git URL) to read it from"
                )
            source, registered = record.source, record.id  # the source of this registration, not a later one
        try:
            job = jobs.start(
                source,
                name=name,
                ref=body.ref,
                use_deployment=jobs.deployment_available(),
                user=None,
                replace_source=body.replace_source,
                repo_id=registered,
            )
        except ValueError as err:
            raise IngestBusy(str(err)) from None
        log.info("%s started ingest %s of %s", who.user, job.key, name)
        return m.job_out(job)

    @app.get("/v1/ingests/{key}", response_model=m.IngestJobOut, tags=["admin"])
    @in_thread
    def ingest_job(key: str, credential: Credential):
        """How an ingest this server started is going (admin)."""
        login(credential, admin=True)
        from grounding.service import jobs

        job = jobs.job(key) if len(key) <= 64 else None
        if job is None:
            raise SourceNotFound(f"no ingest {key!r} was started by this server")
        return m.job_out(job)

    @app.get("/v1/repos/{name:path}/grants", response_model=list[m.GrantOut], tags=["admin"])
    @in_thread
    def grants(name: str, credential: Credential):
        """Who may read the repository (admin)."""
        login(credential, admin=True)
        return [m.GrantOut(principal=p, repo=r) for p, r in access.grants(validation.repo_name(name))]

    @app.post("/v1/repos/{name:path}/grants", response_model=list[m.GrantOut], tags=["admin"])
    @in_thread
    def grant(name: str, body: m.GrantIn, credential: Credential):
        """Let a user or group read the repository (admin)."""
        who = login(credential, admin=True)
        name = validation.repo_name(name)
        access.grant(body.principal, name)
        log.info("%s granted %s to %s", who.user, name, body.principal)
        return [m.GrantOut(principal=p, repo=r) for p, r in access.grants(name)]

    @app.delete("/v1/repos/{name:path}/grants/{principal}", response_model=list[m.GrantOut], tags=["admin"])
    @in_thread
    def revoke(name: str, principal: str, credential: Credential):
        """Take back a grant (admin); the remaining grants are returned."""
        who = login(credential, admin=True)
        name = validation.repo_name(name)
        access.revoke(principal, name)
        log.info("%s revoked %s from %s", who.user, name, principal)
        return [m.GrantOut(principal=p, repo=r) for p, r in access.grants(name)]

    @app.get("/v1/repos/{name:path}", response_model=m.RepoDetail, tags=["repositories"])
    @in_thread
    def repo(name: str, credential: Credential, snapshots: int = Query(20, ge=0, le=200)):
        """One repository: its status, its newest snapshots and its index versions."""
        who = login(credential)
        from grounding.service import status

        name = validation.repo_name(name, derived_ok=True)
        access.authorize(who.user, [name])
        found = [r for r in status.repositories(include_derived=True) if r.name == name]
        if not found:
            raise RepoNotFound(name)
        return m.RepoDetail(
            **m.repo_out(found[0]).model_dump(),
            snapshots=[m.snapshot_out(s, error=who.admin) for s in status.snapshots(name, limit=snapshots)]
            if snapshots
            else [],
            index_versions=[m.version_out(v) for v in status.index_versions(name)],
        )

    # After the grants routes: DELETE /v1/repos/acme/grants/user:bob is a revoke, which they match first.
    @app.delete("/v1/repos/{name:path}", response_model=m.RemovalOut, tags=["admin"])
    @in_thread
    def delete_repo(name: str, credential: Credential):
        """Delete a repository (admin) with its eval indexes, chunks, vectors, grants, runs and server files.
        It does not wait: while an ingest, reindex or training run holds it, the answer is 409."""
        who = login(credential, admin=True)
        from grounding.index.remove import remove_repo

        done = remove_repo(validation.repo_name(name, derived_ok=True), wait=False)
        log.info("%s deleted repository %s (%d chunks)", who.user, done.repo, done.chunks)
        return m.RemovalOut(
            repo=done.repo,
            removed=list(done.removed),
            files=done.files,
            chunks=done.chunks,
            training_runs=done.training_runs,
            directories_deleted=len(done.deleted),
            directories_kept=len(done.kept),
        )

    return app


_bearer = HTTPBearer(auto_error=False, description="an API token (`grounding token create USER`) or an OIDC JWT")


async def _credential(found: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> str | None:
    return found.credentials if found is not None else None


Credential = Annotated[str | None, Depends(_credential)]  # checked by login(), inside the endpoint


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def _events(first: str | Answer, pieces: Iterator[str | Answer]) -> Iterator[str]:
    try:
        for piece in itertools.chain([first], pieces):
            if isinstance(piece, Answer):
                yield _sse("answer", answer_out(piece).model_dump(mode="json"))
            else:
                yield _sse("delta", {"text": piece})
    except Exception as err:  # the status line is sent: the error goes in the stream
        log.warning("answer stream failed: %s", err)
        response = problem(err)
        yield _sse("error", json.loads(response.body))
