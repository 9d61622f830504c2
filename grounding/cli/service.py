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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("api", help="serve the HTTP API (every request needs `Authorization: Bearer TOKEN`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument(
        "--rate-limit", type=int, default=None, help="requests a minute per token (GROUNDING_API_RATE_LIMIT)"
    )
    p.set_defaults(func=_cmd_api)
