"""Subcommands that grant repositories to users and groups: grant, revoke, member, access."""

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
