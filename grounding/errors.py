"""The errors a user of grounding can meet, each with a message that says what to do."""

from __future__ import annotations


class GroundingError(Exception):
    """Base of every error grounding raises on purpose."""


class SourceNotFound(GroundingError):
    """The path or git URL to ingest does not exist or cannot be reached."""


class SourceUnreachable(SourceNotFound):
    """A git remote could not be fetched: perhaps for now (network, server), so worth a retry."""


class EmptyRepository(GroundingError):
    """The source has no file that can be indexed."""


class RepoNotFound(GroundingError):
    """The repository named has never been ingested."""

    def __init__(self, name: str, known: list[str] | None = None, *, why: str | None = None) -> None:
        hint = f" Known repositories: {', '.join(known)}." if known else ""
        super().__init__(
            why or f"repository {name!r} is not ingested; run `grounding ingest PATH_OR_URL --name {name}` first.{hint}"
        )
        self.name = name


class NotIndexed(GroundingError):
    """The repository has no active index version to search."""


class DatabaseUnavailable(GroundingError):
    """Postgres cannot be reached or lacks pgvector."""


class SearchTimeout(GroundingError):
    """A search ran past GROUNDING_SEARCH_TIMEOUT_S in Postgres and was stopped there."""


class IngestBusy(GroundingError):
    """Another ingest or reindex holds the repository's lock."""


class IngestError(GroundingError):
    """An ingest failed; the previous snapshot stays active."""


class EncoderNotFound(GroundingError):
    """The encoder path does not hold a Hugging Face model."""


class DatasetError(GroundingError):
    """A question file cannot be read, or holds no question to ask."""


class GeneratorUnavailable(GroundingError):
    """The answer generator cannot be loaded or reached (no model path, server down, bad reply)."""


class AccessDenied(GroundingError):
    """The user may not read some of the repositories asked for (or they do not exist: the two look alike)."""

    def __init__(self, user: str, repos: list[str]) -> None:
        names = ", ".join(repr(r) for r in repos)
        super().__init__(
            f"user {user!r} may not read {'repository' if len(repos) == 1 else 'repositories'} {names}; "
            f"an administrator can grant access with `grounding grant user:{user} REPO` "
            "(or `grounding grant group:GROUP REPO` for a group the user belongs to)"
        )
        self.user = user
        self.repos = tuple(repos)


class InvalidArgument(GroundingError, ValueError):
    """An argument a caller passed is malformed: a repository name, a count, a question, a path, a URL.

    It is a ValueError too, so callers that caught ValueError before keep working.
    """


class SourceConflict(GroundingError):
    """An ingest names a repository that was ingested from another source: re-pointing it needs a trusted caller."""


class Unauthenticated(GroundingError):
    """No credential, or one that is malformed, unknown, expired or revoked: the HTTP API answers 401."""


class AdminRequired(GroundingError):
    """The caller is authenticated but the action (ingest, grants, tokens) is an administrator's."""


class RateLimited(GroundingError):
    """The token made more requests than GROUNDING_API_RATE_LIMIT allows; retry after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many requests for this token; retry in {retry_after:.1f} s")
        self.retry_after = retry_after
