"""Who is calling: API tokens for the HTTP API and the MCP server, and optional OIDC bearer JWTs.

A token is `gr_<id>_<secret>`; it is shown once, when made, and only its SHA-256 is stored (the secret is
32 random bytes, so a plain hash cannot be searched back; no slow hash is needed). The id names it in
`grounding token list` and `grounding token revoke`. A token acts for one user: what it may read is what
grounding.access grants that user. An admin token may also ingest and manage grants and tokens.

Every failure to authenticate (no token, a malformed one, an unknown, expired or revoked one, a JWT with a
bad signature, issuer, audience or expiry) is Unauthenticated with one message, so a caller learns nothing
about which tokens exist.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass

from grounding import db, store
from grounding.access import user_name
from grounding.config import get_settings
from grounding.errors import InvalidArgument, RateLimited, Unauthenticated

log = logging.getLogger(__name__)

PREFIX = "gr_"
_TOKEN = re.compile(r"gr_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_DURATION = re.compile(r"(\d{1,6})([mhdw])")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DEFAULT_EXPIRY = "90d"
REJECTED = "missing, malformed, unknown, expired or revoked credential; send `Authorization: Bearer TOKEN`"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the grounding user it acts for, and how it proved it."""

    user: str
    admin: bool = False
    token_id: str | None = None  # None for an OIDC JWT
    expires_at: dt.datetime | None = None
    via: str = "token"  # token or oidc


@dataclass(frozen=True)
class NewToken:
    """A token just made: `secret` is the whole token, shown once and never stored."""

    id: str
    user: str
    secret: str
    admin: bool
    expires_at: dt.datetime | None


def expiry(text: str | None, *, now: dt.datetime | None = None) -> dt.datetime | None:
    """When a token made now with `--expires TEXT` expires: `30d`, `12h`, `90m`, `2w`, an ISO date, or `never`."""
    now = now or dt.datetime.now(dt.timezone.utc)
    text = DEFAULT_EXPIRY if text is None else text
    if not isinstance(text, str):
        raise InvalidArgument(f"expires must be a duration such as 30d or a date, not {text!r}")
    if text.strip().lower() == "never":
        return None
    if m := _DURATION.fullmatch(text.strip()):
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
        if seconds <= 0:
            raise InvalidArgument(f"expires must be in the future, not {text!r}")
        return now + dt.timedelta(seconds=seconds)
    try:
        at = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidArgument(
            f"expires {text!r} is not a duration (90m, 12h, 30d, 2w), an ISO date (2027-01-31) or `never`"
        ) from None
    at = at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc)
    if at <= now:
        raise InvalidArgument(f"expires {text!r} is in the past")
    return at


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def create(user: str, *, admin: bool = False, expires: str | None = None, label: str | None = None) -> NewToken:
    """Make a token for `user` (expiring after `expires`, default 90 days); the returned secret is shown once."""
    name = user_name(user)
    if not isinstance(admin, bool):
        raise InvalidArgument(f"admin must be True or False, not {admin!r}")
    if label is not None and (not isinstance(label, str) or len(label) > 200 or "\0" in label):
        raise InvalidArgument("a token's label is a string of at most 200 characters")
    expires_at = expiry(expires)
    token_id = secrets.token_hex(6)
    secret = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    with db.get_engine().begin() as conn:
        store.insert_token(
            conn, token_id, user=name, secret_hash=_hash(secret), admin=admin, label=label, expires_at=expires_at
        )
    log.info("token %s made for %s%s", token_id, name, " (admin)" if admin else "")
    return NewToken(token_id, name, secret, admin, expires_at)


def revoke(token_id: str) -> bool:
    """Revoke the token with this id (as `grounding token list` shows it); False if none was live."""
    if not isinstance(token_id, str) or not re.fullmatch(r"[0-9a-f]{12}", token_id):
        raise InvalidArgument(f"a token id is 12 hex digits, as `grounding token list` shows, not {token_id!r}")
    with db.get_engine().begin() as conn:
        revoked = store.revoke_token(conn, token_id)
    _checked.forget(token_id)  # at once in this process; other processes trust it for token_cache_s at most
    return revoked


def tokens(user: str | None = None) -> list[dict]:
    """Every token (id, user, admin, label, created, expires, revoked, last used), or `user`'s; never a secret."""
    name = None if user is None else user_name(user)
    with db.get_engine().connect() as conn:
        return store.list_tokens(conn, name)


def authenticate(credential: str | None) -> Principal:
    """The Principal a bearer credential (an API token, or an OIDC JWT where configured) stands for."""
    if not isinstance(credential, str) or not credential:
        raise Unauthenticated(REJECTED)
    credential = credential.strip()
    if credential.startswith(PREFIX):
        return _api_token(credential)
    if credential.count(".") == 2 and get_settings().oidc_issuer:
        return _oidc(credential)
    raise Unauthenticated(REJECTED)


def bearer(header: str | None) -> str | None:
    """The credential of an `Authorization: Bearer ...` header; None if there is none."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


class CheckedTokens:
    """Tokens this process found live a moment ago, trusted for `token_cache_s` without asking the database.

    The lookup is ~1-2 ms of a request's time here (a round trip to a server process that was asleep), most of
    what the API adds to a search. Only live tokens are kept, at most MAX of them, each no longer than its
    own expiry; `revoke` forgets one at once in its own process, and a revoke made elsewhere (the CLI, another
    API worker) takes effect here within token_cache_s. 0 turns the cache off.
    """

    MAX = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Principal]] = {}  # sha256 -> (monotonic deadline, principal)

    def get(self, secret_hash: str) -> Principal | None:
        with self._lock:
            entry = self._entries.get(secret_hash)
        if entry is None:
            return None
        deadline, who = entry
        if time.monotonic() >= deadline or (
            who.expires_at is not None and who.expires_at <= dt.datetime.now(dt.timezone.utc)
        ):
            with self._lock:
                self._entries.pop(secret_hash, None)
            return None
        return who

    def put(self, secret_hash: str, who: Principal, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.MAX:
                self._entries.clear()  # a burst of distinct tokens: start over rather than keep an order
            self._entries[secret_hash] = (time.monotonic() + seconds, who)

    def forget(self, token_id: str | None = None) -> None:
        """Drop the token with this id (every token when None)."""
        with self._lock:
            if token_id is None:
                self._entries.clear()
            else:
                for key in [k for k, (_, who) in self._entries.items() if who.token_id == token_id]:
                    del self._entries[key]


_checked = CheckedTokens()


def _api_token(token: str) -> Principal:
    if not _TOKEN.fullmatch(token):
        raise Unauthenticated(REJECTED)
    secret_hash = _hash(token)
    if (who := _checked.get(secret_hash)) is not None:
        return who
    with db.get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        row = store.token_by_hash(conn, secret_hash)  # one statement, one round trip
    if row is None or row["revoked_at"] is not None:
        raise Unauthenticated(REJECTED)
    if row["expires_at"] is not None and row["expires_at"] <= row["now"]:
        raise Unauthenticated(REJECTED)
    who = Principal(row["user_name"], admin=row["admin"], token_id=row["id"], expires_at=row["expires_at"])
    _checked.put(secret_hash, who, _cache_seconds())
    return who


def _cache_seconds() -> float:
    """GROUNDING_TOKEN_CACHE_S, refused unless 0-300 (nan or inf would keep a revoked token alive for good)."""
    seconds = get_settings().token_cache_s
    if not (math.isfinite(seconds) and 0 <= seconds <= 300):
        raise InvalidArgument(f"GROUNDING_TOKEN_CACHE_S must be between 0 and 300 seconds, not {seconds!r}")
    return seconds


_jwks_clients: dict[str, object] = {}


_discovered: dict[str, str] = {}  # issuer -> jwks_uri, once its discovery document answered


def _jwks_url(issuer: str) -> str:
    settings = get_settings()
    if settings.oidc_jwks_url:
        return settings.oidc_jwks_url
    if issuer in _discovered:
        return _discovered[issuer]
    import httpx

    try:
        discovery = httpx.get(issuer.rstrip("/") + "/.well-known/openid-configuration", timeout=10).json()
        url = discovery["jwks_uri"]
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ValueError(f"jwks_uri {url!r} is not an http(s) URL")
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as err:
        log.warning("OIDC discovery at %s failed: %s", issuer, err)
        raise Unauthenticated(REJECTED) from None
    _discovered[issuer] = url
    return url


def email_unverified(claims) -> bool:
    """Whether an identity's `email_verified` says no: `false` as JSON, or as the string some providers send.
    A claim left out is not a no (Entra ID sends none): with such a provider, name users by `sub`."""
    return str(claims.get("email_verified")).strip().lower() in ("false", "0")


def _oidc(token: str) -> Principal:
    import jwt

    settings = get_settings()
    if not settings.oidc_audience:
        log.warning("GROUNDING_OIDC_ISSUER is set without GROUNDING_OIDC_AUDIENCE: every JWT is refused")
        raise Unauthenticated(REJECTED)
    url = _jwks_url(settings.oidc_issuer)
    client = _jwks_clients.get(url)
    if client is None:
        client = _jwks_clients[url] = jwt.PyJWKClient(url, cache_keys=True, lifespan=300)
    try:
        key = client.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key.key,
            algorithms=["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"],  # never `none`, never HMAC
            audience=settings.oidc_audience,
            issuer=settings.oidc_issuer,
            options={"require": ["exp", "iss", "aud"]},
            leeway=30,
        )
    except jwt.PyJWTError as err:
        log.info("JWT refused: %s", err)
        raise Unauthenticated(REJECTED) from None
    name = claims.get(settings.oidc_user_claim)
    try:  # a bare name only: `user:x` or `group:y` in a claim is refused, not read as a principal
        user = user_name(name) if isinstance(name, str) and ":" not in name else None
    except InvalidArgument:
        user = None
    if user is None:
        log.info("JWT refused: claim %s is not a user name: %r", settings.oidc_user_claim, name)
        raise Unauthenticated(REJECTED)
    if settings.oidc_user_claim == "email" and email_unverified(claims):  # as the copilot's sign-in
        log.info("JWT refused: its email %r is not verified", name)
        raise Unauthenticated(REJECTED)
    try:
        exp = dt.datetime.fromtimestamp(claims["exp"], dt.timezone.utc)
    except (ValueError, OverflowError, OSError, TypeError):  # an `exp` past year 9999 is valid to PyJWT
        log.info("JWT refused: exp %r is not a date", claims.get("exp"))
        raise Unauthenticated(REJECTED) from None
    return Principal(user, admin=False, expires_at=exp, via="oidc")


class RateLimiter:
    """A token bucket per caller: `per_minute` requests a minute, in bursts of up to that many."""

    def __init__(self, per_minute: int) -> None:
        if isinstance(per_minute, bool) or not isinstance(per_minute, int) or per_minute < 0:
            raise InvalidArgument(f"GROUNDING_API_RATE_LIMIT must be a whole number >= 0, not {per_minute!r}")
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Take one request from `key`'s bucket; RateLimited if it is empty."""
        if self.per_minute == 0:
            return
        rate = self.per_minute / 60.0
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - at) * rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise RateLimited((1.0 - tokens) / rate)
            self._buckets[key] = (tokens - 1.0, now)
