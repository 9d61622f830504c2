"""Who may read which repository: grants to users and groups, and group membership.

A principal is `user:NAME` or `group:NAME`; a bare name means a user. A user may read a repository
granted to them or to a group they belong to, and every eval index the catalogue marks as derived
from it (repositories.derived_from; a name that merely looks derived grants nothing). `authorize(None,
...)` is a trusted local caller (the CLI, a script) and is never checked; an empty user name is an
error, never trusted. A denied user cannot tell a repository that does not exist from one not granted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from grounding import db, store, validation
from grounding.errors import AccessDenied, InvalidArgument

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
KINDS = ("user", "group")


def _canonical(text: str) -> str:
    """The canonical form of a principal: `user:NAME` or `group:NAME` (a bare name is a user)."""
    if not isinstance(text, str):
        raise InvalidArgument(f"a principal is a string such as `user:NAME`, not {type(text).__name__} {text!r}")
    kind, sep, name = text.partition(":")
    if not sep:
        kind, name = "user", text
    if kind not in KINDS or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"principal {text!r} is not `user:NAME`, `group:NAME` or a bare user name; a name starts with a "
            "letter or digit and holds letters, digits and . _ @ + - (at most 128 characters)"
        )
    return f"{kind}:{name}"


def _name_of(text: str, kind: str) -> str:
    canonical = _canonical(text if ":" in text else f"{kind}:{text}")
    if not canonical.startswith(kind + ":"):
        raise InvalidArgument(f"{text!r} is not a {kind}: pass a bare name or `{kind}:NAME`")
    return canonical.split(":", 1)[1]


def user_name(text: str) -> str:
    """The user a bare name or `user:NAME` names; InvalidArgument for a group or a malformed name."""
    return _name_of(text, "user")


def grant(principal: str, repo: str) -> None:
    """Let `principal` (a user, a group or a bare user name) read repository `repo`."""
    who = _canonical(principal)
    with db.get_engine().begin() as conn:
        if not store.insert_grant(conn, who, store.repo_id(conn, repo)):
            log.info("%s already had %s", who, repo)


def revoke(principal: str, repo: str) -> None:
    """Take back a grant of `repo` to `principal`; nothing happens if it held none."""
    who = _canonical(principal)
    with db.get_engine().begin() as conn:
        if not store.delete_grant(conn, who, store.repo_id(conn, repo)):
            log.info("%s held no grant of %s", who, repo)


def add_member(user: str, group: str) -> None:
    """Put `user` in `group`: the user may read what the group is granted."""
    with db.get_engine().begin() as conn:
        store.insert_member(conn, _name_of(user, "user"), _name_of(group, "group"))


def remove_member(user: str, group: str) -> None:
    """Take `user` out of `group`; nothing happens if they were not in it."""
    with db.get_engine().begin() as conn:
        store.delete_member(conn, _name_of(user, "user"), _name_of(group, "group"))


def allowed_repos(user: str) -> list[str]:
    """Sorted names of the repositories `user` may read, directly or through a group, with their eval copies."""
    if validation.user(user) is None:
        raise InvalidArgument("allowed_repos needs a user name; a trusted caller may read every repository")
    name = _name_of(user, "user")
    with db.get_engine().connect() as conn:
        return sorted(store.granted_repos(conn, name))


def authorize(user: str | None, repos: Sequence[str]) -> None:
    """Raise AccessDenied unless `user` may read every one of `repos`; None is a trusted local caller."""
    if validation.user(user) is None:
        return
    name = _name_of(user, "user")
    allowed = set(allowed_repos(name))
    denied = [r for r in dict.fromkeys(repos) if r not in allowed]
    if denied:
        raise AccessDenied(name, denied)


def grants(repo: str | None = None) -> list[tuple[str, str]]:
    """(principal, repository) of every grant, or of `repo`'s, sorted by repository then principal."""
    with db.get_engine().connect() as conn:
        found = store.list_grants(conn, store.repo_id(conn, repo) if repo is not None else None)
    return sorted(found, key=lambda g: (g[1], g[0]))
