"""What every page of the copilot shares: the login, the user, the repositories they may see, errors as messages.

`streamlit run app/copilot.py` puts this directory on sys.path, so pages import it as `ui_common`.

GROUNDING_UI_AUTH says how sessions authenticate. `token` (the default, and always so off loopback): each
browser session signs in with an API token (`grounding token create USER`), which is checked again on every
rerun, so a revoked or expired token signs the session out; where Streamlit's own OIDC is configured
(`[auth]` in .streamlit/secrets.toml, and Authlib installed) the provider's sign-in is offered too. `none`,
which only `grounding ui` on loopback sets: the server's one user (GROUNDING_UI_USER), or local trusted mode;
a server that listens beyond loopback asks for a login even then: one given a non-loopback `--server.address`,
and one given none, which Streamlit binds to every interface. Every page asks
`current_user()` first, and that is where the login form stops a page.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import streamlit as st

from grounding.errors import GroundingError, RepoNotFound
from grounding.service.status import RepoScope, repo_scope
from grounding.validation import is_loopback

if TYPE_CHECKING:
    from grounding.tokens import Principal

log = logging.getLogger("grounding.app")

USER_ENV = "GROUNDING_UI_USER"  # set by `grounding ui --user NAME`
AUTH_ENV = "GROUNDING_UI_AUTH"  # token or none (grounding.cli.repos.ui_auth)
TOKEN_KEY, PRINCIPAL_KEY = "grounding_token", "grounding_principal"  # in st.session_state, once signed in


def login_required() -> bool:
    """Whether sessions sign in: unless GROUNDING_UI_AUTH is an explicit `none` (which `grounding ui` sets on
    loopback only) on a server listening on a loopback address that admits only loopback Host names.
    Without `--server.address` Streamlit listens on every interface, so that is beyond this machine too;
    without `--server.allowedHosts` any page whose name resolves to 127.0.0.1 could drive it."""
    if os.environ.get(AUTH_ENV, "token").strip().lower() != "none":
        return True
    address = st.get_option("server.address")
    hosts = st.get_option("server.allowedHosts") or []
    only_here = bool(hosts) and all(is_loopback(h.strip("[]")) for h in hosts)
    return not (address and is_loopback(address) and only_here)


def trusted_session() -> bool:
    """Local trusted mode: no login and no GROUNDING_UI_USER. Only such a session is shown server details
    (repositories' sources, ingest and run errors, encoder paths, generator URLs), which the API shows to
    no user."""
    return not login_required() and not os.environ.get(USER_ENV)


def reads_errors() -> bool:
    """Whether this session is shown ingest, reindex and training errors (which may name server paths and
    hosts): local trusted mode, or a signed-in admin, as the API shows a failed snapshot's error to admins.
    Sources stay trusted mode's (the API shows them to nobody)."""
    if trusted_session():
        return True
    who = current_principal()
    return who is not None and who.admin


def shown_encoder(name: str | None) -> str:
    """An encoder as this session may read it: a trusted one its whole name, others its last part (a trained
    encoder is named by its checkpoint's path on the server), as the API shows it."""
    if not name:
        return ""
    return name if trusted_session() else name.rstrip("/").rsplit("/", 1)[-1]


def current_principal() -> Principal | None:
    """The signed-in Principal (grounding.tokens), or None without a login; stops the page at the login form."""
    if not login_required():
        return None
    return require_login()


def current_user() -> str | None:
    """Whose grants the page applies: the signed-in user, the server's --user, or None (local trusted mode)."""
    who = current_principal()
    if who is None:
        return os.environ.get(USER_ENV) or None
    return who.user


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def oidc_providers() -> list[tuple[str | None, str]]:
    """(st.login's provider argument, its button label) for each OIDC provider configured in secrets.toml's
    `[auth]`: the unnamed one (client_id in [auth] itself) and each `[auth.NAME]`; none without Authlib."""
    from streamlit.auth_util import is_authlib_installed

    try:
        auth = st.secrets.get("auth")
    except Exception:  # no secrets.toml at all, or a broken one: Streamlit raises rather than answer "no"
        return []
    if not isinstance(auth, Mapping) or not {"redirect_uri", "cookie_secret"} <= set(auth):
        return []
    if not is_authlib_installed():
        _warn_once("[auth] is configured in secrets.toml but Authlib>=1.3.2 is not installed: no OIDC sign-in")
        return []
    found: list[tuple[str | None, str]] = []
    if "client_id" in auth:  # the unnamed provider: named by its issuer's host
        host = urllib.parse.urlsplit(str(auth.get("server_metadata_url", ""))).hostname
        found.append((None, host or "your identity provider"))
    for name, section in auth.items():
        if not isinstance(section, Mapping) or name == "client_kwargs":  # client_kwargs: the unnamed one's options
            continue
        if "_" in name:  # st.login refuses these
            _warn_once(f"[auth.{name}] in secrets.toml: Streamlit allows no underscore in a provider's name")
        else:
            found.append((name, name.title()))
    return found


def _oidc_principal() -> Principal | None:
    """The Principal of a session signed in through Streamlit's OIDC (st.login), or None.

    The user is the ID token's GROUNDING_OIDC_USER_CLAIM (default `sub`), as for the API's JWTs, so a person
    has one name, and one set of grants, in both; an `email` claim counts only when `email_verified` is not
    false (tokens.email_unverified).
    """
    from grounding import tokens
    from grounding.access import user_name
    from grounding.config import get_settings
    from grounding.errors import InvalidArgument

    if not oidc_providers() or not getattr(st.user, "is_logged_in", False):
        return None
    claim = get_settings().oidc_user_claim
    name = st.user.get(claim)
    if claim == "email" and tokens.email_unverified(st.user):
        log.info("OIDC sign-in refused: %r is not a verified email", name)
        return None
    try:  # a bare name only: `user:x` or `group:y` in a claim is refused, not read as a principal
        return tokens.Principal(user_name(name), via="oidc") if isinstance(name, str) and ":" not in name else None
    except InvalidArgument:
        return None


def sign_out() -> None:
    """Forget everything this session held (its token, its chat, its widgets); log out of the OIDC provider too."""
    oidc = bool(oidc_providers()) and getattr(st.user, "is_logged_in", False)
    for key in list(st.session_state):
        del st.session_state[key]
    if oidc:
        st.logout()


def require_login() -> Principal:
    """The session's Principal; without a valid one, the login form, and the page stops there."""
    from grounding import tokens
    from grounding.errors import Unauthenticated

    token = st.session_state.get(TOKEN_KEY)
    who = None
    if token:
        try:
            who = tokens.authenticate(token)  # on every rerun: a revoked or expired token ends the session here
        except Unauthenticated:
            sign_out()
            st.session_state["login_note"] = "Your token is no longer valid (revoked or expired): sign in again."
    else:
        who = _oidc_principal()
    if who is not None:
        st.session_state[PRINCIPAL_KEY] = who
        return who
    st.session_state.pop(PRINCIPAL_KEY, None)
    _login_form()
    st.stop()


def _signed_in(who: Principal) -> None:
    with st.sidebar:
        how = " (admin)" if who.admin else " (through your identity provider)" if who.via == "oidc" else ""
        st.caption(f"Signed in as **{who.user}**{how}")
        st.button("Sign out", key="sign_out", on_click=sign_out)


def _login_form() -> None:
    from grounding import tokens
    from grounding.config import get_settings
    from grounding.errors import Unauthenticated

    st.title("Sign in to grounding")
    if note := st.session_state.pop("login_note", None):
        st.warning(note)
    if getattr(st.user, "is_logged_in", False) and oidc_providers():  # signed in there, but no user here
        st.error(
            f"Your identity provider's sign-in carries no usable `{get_settings().oidc_user_claim}` claim "
            "(or an unverified email): sign in with a token, or sign out of it."
        )
        st.button("Sign out of the identity provider", key="oidc_sign_out", on_click=sign_out)
    with st.form("login", clear_on_submit=True):
        token = st.text_input("API token", type="password", help="`grounding token create USER` makes one")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        try:
            tokens.authenticate(token)
        except Unauthenticated:
            st.error("That token is not valid (malformed, unknown, expired or revoked).")
        else:
            st.session_state[TOKEN_KEY] = token.strip()
            st.rerun()
    for provider, label in oidc_providers():
        st.button(f"Sign in with {label}", key=f"oidc_{provider or 'default'}", on_click=st.login, args=(provider,))


@contextlib.contextmanager
def errors_as_messages(what: str) -> Iterator[dict]:
    """Show what goes wrong inside as an error box, never as a traceback: a domain error's own message,
    anything else with its type (the traceback goes to the server log). Yields a dict that gets `error`."""
    outcome: dict = {}
    try:
        yield outcome
    except RepoNotFound as err:  # its own message lists every repository, as the API never shows
        outcome["error"] = f"{what}: no repository {err.name!r} that you may read"
        st.error(outcome["error"])
    except (GroundingError, ValueError, PermissionError) as err:
        if trusted_session():
            outcome["error"] = f"{what}: {err}"
        elif isinstance(err, GroundingError):  # as the API words it for a user: a generator without its URL
            from grounding.service.api import public_error

            outcome["error"] = f"{what}: {public_error(err)[1]}"
        else:  # an OSError's text holds its path
            outcome["error"] = f"{what}: {type(err).__name__}"
        st.error(outcome["error"])
    except Exception as err:  # the UI boundary: the server log keeps the traceback
        log.exception("%s failed", what)
        detail = f"{type(err).__name__}: {err}" if trusted_session() else type(err).__name__  # str(err) may hold paths
        outcome["error"] = f"{what} failed unexpectedly ({detail}); the server log has the details."
        st.error(outcome["error"])


def scope_or_stop() -> RepoScope:
    """The repositories this user may see, with the mode shown in the sidebar; stops the page if unreadable."""
    who = current_principal()  # the token is checked again here, just before the repositories are read
    user = who.user if who is not None else os.environ.get(USER_ENV) or None
    if who is not None:
        _signed_in(who)
    with errors_as_messages("Reading the repositories") as outcome:
        scope = repo_scope(user)
    if "error" in outcome:
        st.stop()
    if user is None:
        st.sidebar.warning(scope.note, icon=":material/lock_open:")
    else:
        st.sidebar.info(scope.note, icon=":material/person:")
    return scope


def when(value) -> str:
    """A timestamp for tables: local minutes, or an empty cell."""
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M")
