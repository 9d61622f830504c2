"""Subcommands that serve grounding to other programs: api (HTTP) and mcp (coding agents)."""

from __future__ import annotations

import argparse


def _cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from grounding import db
    from grounding.service.api import create_app

    db.get_engine()  # the database up (or a clear error) before the port opens
    app = create_app(rate_limit=args.rate_limit)
    print(f"grounding API on http://{args.host}:{args.port} (OpenAPI at /docs); Ctrl-C stops it.", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=args.verbose)
    return 0


def _cmd_mcp(args: argparse.Namespace) -> int:
    import contextlib
    import os
    import sys

    from grounding import db
    from grounding.service import mcp

    if not args.http:
        token = os.environ.get("GROUNDING_TOKEN")  # set but empty is refused, not taken for a trusted caller
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the protocol's, from the first byte
            db.get_engine()
            user = mcp.stdio_user(token)
        who = "a trusted local caller (no GROUNDING_TOKEN)" if user is None else f"user {user!r}"
        print(f"grounding MCP server on stdio, acting as {who}.", file=sys.stderr, flush=True)
        mcp.create_server(http=False, token=token).run("stdio")
        return 0
    import uvicorn

    db.get_engine()
    app = mcp.create_http_app(host=args.host, rate_limit=args.rate_limit)
    print(
        f"grounding MCP server on http://{args.host}:{args.port}/mcp (streamable HTTP; every request needs "
        "`Authorization: Bearer TOKEN`); Ctrl-C stops it.",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=args.verbose)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("api", help="serve the HTTP API (every request needs `Authorization: Bearer TOKEN`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument(
        "--rate-limit", type=int, default=None, help="requests a minute per token (GROUNDING_API_RATE_LIMIT)"
    )
    p.set_defaults(func=_cmd_api)

    p = sub.add_parser(
        "mcp",
        help="serve the MCP server for coding agents: stdio (as GROUNDING_TOKEN's user, else a trusted local caller) "
        "or --http",
    )
    p.add_argument("--http", action="store_true", help="serve streamable HTTP at /mcp (every request needs a token)")
    p.add_argument("--host", default="127.0.0.1", help="with --http: address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8766, help="with --http: port (default 8766)")
    p.add_argument(
        "--rate-limit",
        type=int,
        default=None,
        help="with --http: tool calls a minute per token (GROUNDING_API_RATE_LIMIT)",
    )
    p.set_defaults(func=_cmd_mcp)
