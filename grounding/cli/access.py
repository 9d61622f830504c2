"""Subcommands that grant repositories to users and groups, and make their API tokens: grant, revoke, member,
access, token."""

from __future__ import annotations

import argparse
import sys

from grounding.cli.common import EXIT_USAGE


def _usage_error(err: ValueError) -> int:
    print(f"grounding: error: {err}", file=sys.stderr)
    return EXIT_USAGE


def _cmd_grant(args: argparse.Namespace) -> int:
    from grounding import access

    try:
        access.grant(args.principal, args.repo)
    except ValueError as err:
        return _usage_error(err)
    print(f"{args.repo}: readable by {', '.join(p for p, _ in access.grants(args.repo))}")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    from grounding import access

    who = args.principal if ":" in args.principal else f"user:{args.principal}"
    try:
        held = (who, args.repo) in access.grants(args.repo)
        access.revoke(args.principal, args.repo)
    except ValueError as err:
        return _usage_error(err)
    print(f"revoked {args.repo} from {who}" if held else f"{who} held no grant of {args.repo}; nothing to revoke")
    if who.startswith("user:") and args.repo in access.allowed_repos(who):
        print(f"{who} can still read {args.repo} through a group; see `grounding access`")
    return 0


def _cmd_member(args: argparse.Namespace) -> int:
    from grounding import access

    try:
        if args.action == "add":
            access.add_member(args.user, args.group)
        else:
            access.remove_member(args.user, args.group)
    except ValueError as err:
        return _usage_error(err)
    print(f"added {args.user} to {args.group}" if args.action == "add" else f"removed {args.user} from {args.group}")
    return 0


def _cmd_access(args: argparse.Namespace) -> int:
    from grounding import access, db, store

    if args.user:
        try:
            repos = access.allowed_repos(args.user)
        except ValueError as err:
            return _usage_error(err)
        print("\n".join(repos) if repos else f"{args.user} may read no repository; `grounding grant` gives access")
        return 0
    grants = access.grants()
    with db.get_engine().connect() as conn:
        members = sorted(store.list_members(conn))
    if not grants and not members:
        print("no grants yet; run `grounding grant PRINCIPAL REPO`")
    for principal, repo in grants:
        print(f"{repo:30} {principal}")
    groups: dict[str, list[str]] = {}
    for group, user in members:
        groups.setdefault(group, []).append(user)
    for group, users in groups.items():
        print(f"group:{group}: {', '.join(users)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grant", help="let a user or group read a repository (PRINCIPAL: user:NAME, group:NAME or NAME)")
    p.add_argument("principal")
    p.add_argument("repo")
    p.set_defaults(func=_cmd_grant)

    p = sub.add_parser("revoke", help="take back a grant of a repository")
    p.add_argument("principal")
    p.add_argument("repo")
    p.set_defaults(func=_cmd_revoke)

    p = sub.add_parser("member", help="add a user to a group, or remove them")
    p.add_argument("action", choices=["add", "remove"])
    p.add_argument("user")
    p.add_argument("group")
    p.set_defaults(func=_cmd_member)

    p = sub.add_parser("access", help="the repositories USER may read, or every grant and group")
    p.add_argument("user", nargs="?")
    p.set_defaults(func=_cmd_access)

    register_token(sub)


def _when(at) -> str:
    return at.strftime("%Y-%m-%d %H:%M") if at is not None else "-"


def _cmd_token(args: argparse.Namespace) -> int:
    from grounding import tokens

    try:
        if args.action == "create":
            made = tokens.create(args.user, admin=args.admin, expires=args.expires, label=args.label)
            until = f"until {_when(made.expires_at)} UTC" if made.expires_at else "with no expiry"
            print(f"token {made.id} for user:{made.user}{' (admin)' if made.admin else ''}, valid {until}.")
            print("It is shown only now; keep it secret (send it as `Authorization: Bearer TOKEN`):")
            print(made.secret)
            return 0
        if args.action == "revoke":
            print(f"revoked token {args.id}" if tokens.revoke(args.id) else f"no live token {args.id}; nothing revoked")
            return 0
        rows = tokens.tokens(args.user)
    except ValueError as err:
        return _usage_error(err)
    if not rows:
        print("no tokens yet; run `grounding token create USER`")
    for t in rows:
        state = "revoked" if t["revoked_at"] else "live"
        print(
            f"{t['id']}  user:{t['user_name']:20} {'admin' if t['admin'] else 'read ':5} {state:7} "
            f"made {_when(t['created_at'])}  expires {_when(t['expires_at'])}  used {_when(t['last_used_at'])}"
            + (f"  {t['label']}" if t["label"] else "")
        )
    return 0


def register_token(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="API tokens for the HTTP API and the MCP server: create, list, revoke")
    actions = p.add_subparsers(dest="action", required=True)
    c = actions.add_parser("create", help="make a token for USER (printed once; only its hash is kept)")
    c.add_argument("user")
    c.add_argument("--admin", action="store_true", help="may also ingest and manage grants over the API")
    c.add_argument("--expires", default=None, help="90m, 12h, 30d, 2w, an ISO date, or never (default 90d)")
    c.add_argument("--label", default=None, help="what the token is for, shown by `token list`")
    ls = actions.add_parser("list", help="every token, or USER's (never the secrets)")
    ls.add_argument("user", nargs="?")
    r = actions.add_parser("revoke", help="revoke the token with this id (as `token list` shows)")
    r.add_argument("id")
    p.set_defaults(func=_cmd_token)
