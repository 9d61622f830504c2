"""The grammar of what callers name (repositories, users, refs) and the checks every entry point shares.

Every public function runs its arguments through these before anything else, so a bad argument is an
InvalidArgument (a GroundingError and a ValueError) that says what was expected, never a raw SQL, git
or type error. Repository names chosen by users follow REPO_NAME; grounding's own derived eval
indexes are `NAME~eval-HARVESTER`, a form no user can choose (`~` is outside the grammar), and are
marked as derived in the catalogue (repositories.derived_from), which is what access checks read.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from grounding.errors import InvalidArgument

REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,99})?")
DERIVED_NAME = re.compile(rf"(?P<parent>{REPO_NAME.pattern})~eval-(?P<harvester>[a-z]{{1,32}})")
GIT_REF = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/+@-]{0,254}")
MAX_QUESTION_CHARS = 20_000
MAX_K = 200

NAME_RULE = (
    "a repository name is 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit, "
    "optionally as OWNER/NAME"
)


def repo_name(name: object, *, derived_ok: bool = False) -> str:
    """`name` if it is a valid repository name (a derived eval index's too, with `derived_ok`)."""
    if not isinstance(name, str):
        raise InvalidArgument(f"a repository name is a string, not {type(name).__name__} {name!r}")
    if REPO_NAME.fullmatch(name) or (derived_ok and DERIVED_NAME.fullmatch(name)):
        return name
    shown = name if len(name) <= 60 else name[:60] + "..."
    raise InvalidArgument(f"{shown!r} is not a valid repository name: {NAME_RULE}")


def repo_names(repos: object) -> tuple[str, ...]:
    """One name or a sequence of names, each valid, without repeats, in the order given."""
    names = (repos,) if isinstance(repos, str) else tuple(repos) if isinstance(repos, Sequence) else None
    if not names:
        raise InvalidArgument(f"name at least one repository, not {repos!r}")
    return tuple(dict.fromkeys(repo_name(n, derived_ok=True) for n in names))


def count(value: object, what: str, *, minimum: int = 1, maximum: int = MAX_K) -> int:
    """An integer in [minimum, maximum]; a bool, a string or a float is refused, not converted."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be an integer, not {type(value).__name__} {value!r}")
    if not minimum <= value <= maximum:
        raise InvalidArgument(f"{what} must be between {minimum} and {maximum}, not {value}")
    return value


def question(text: object) -> str:
    """A question (or query): a non-blank string of at most MAX_QUESTION_CHARS characters, without NULs."""
    if not isinstance(text, str):
        raise InvalidArgument(f"the question must be a string, not {type(text).__name__} {text!r}")
    if not text.strip():
        raise InvalidArgument("the question is empty; ask something about the code")
    if len(text) > MAX_QUESTION_CHARS:
        raise InvalidArgument(f"the question has {len(text)} characters; at most {MAX_QUESTION_CHARS} are read")
    if "\0" in text:
        raise InvalidArgument("the question holds a NUL character")
    return text


def user(name: object) -> str | None:
    """None (a trusted local caller) or a user name; an empty or blank name is refused, not taken as trusted."""
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgument(f"user must be a user name, not {name!r}; leave it out to act as a trusted local caller")
    return name


def git_ref(ref: object) -> str | None:
    """None or a branch, tag or commit name that git cannot mistake for an option."""
    if ref is None:
        return None
    if not isinstance(ref, str) or not GIT_REF.fullmatch(ref) or ".." in ref:
        raise InvalidArgument(
            f"{ref!r} is not a git ref: a branch, tag or commit of letters, digits and . _ / + @ -, "
            "not starting with '-' or '.'"
        )
    return ref


def repo_path(path: object) -> str:
    """A relative POSIX path inside a repository, as ingest stores it (no `..`, no leading `/`)."""
    if not isinstance(path, str) or not path or "\0" in path or len(path) > 4096:
        raise InvalidArgument(f"a file path in a repository is a non-empty string, not {path!r}")
    clean = path.removeprefix("./")
    if clean.startswith("/") or any(part in ("", "..") for part in clean.split("/")):
        raise InvalidArgument(f"{path!r} is not a path inside the repository: give it relative to the root")
    return clean


def directory_name(repo: str) -> str:
    """A directory name of `repo`'s own under GROUNDING_HOME: readable, plus a hash of the exact name.

    Readable alone it would not be one-to-one: `acme/api` and `acme_api` would share a directory (and
    one's files could be ingested into the other's eval index), and a case-insensitive disk would give
    `Acme` and `acme` one."""
    readable = re.sub(r"[^\w.-]", "_", repo).lstrip(".")[:60] or "_"
    return f"{readable}-{hashlib.sha256(repo.encode()).hexdigest()[:16]}"


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")  # the Host names a browser on this machine sends


def loopback_hosts(address: str) -> list[str]:
    """The Host header names a server listening on loopback `address` answers: this machine's own, so that a
    page whose name was re-pointed at 127.0.0.1 (DNS rebinding) is refused."""
    return sorted({*LOOPBACK_HOSTS, address.strip("[]").lower()})


def is_loopback(address: str) -> bool:
    """Whether a listening address is this machine only: `localhost` or a loopback IP (a host name is not)."""
    import ipaddress

    try:
        return address == "localhost" or ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
