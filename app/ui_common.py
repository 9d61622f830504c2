"""What every page of the copilot shares: the login, the user, the repositories they may see, errors as messages.

`streamlit run app/copilot.py` puts this directory on sys.path, so pages import it as `ui_common`.

GROUNDING_UI_AUTH says how sessions authenticate. `token` (the default, and always so off loopback): each
browser session signs in with an API token (`grounding token create USER`), which is checked again on every
rerun, so a revoked or expired token signs the session out; where Streamlit's own OIDC is configured
(`[auth]` in .streamlit/secrets.toml) the provider's sign-in is offered too. `none`, which only `grounding ui`
on loopback sets: the server's one user (GROUNDING_UI_USER), or local trusted mode. Every page asks
`current_user()` first, and that is where the login form stops a page.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import streamlit as st

from grounding.errors import GroundingError
from grounding.service.status import RepoScope, repo_scope

log = logging.getLogger("grounding.app")

USER_ENV = "GROUNDING_UI_USER"  # set by `grounding ui --user NAME`
AUTH_ENV = "GROUNDING_UI_AUTH"  # token or none (grounding.cli.repos.ui_auth)
TOKEN_KEY = "grounding_token"


def login_required() -> bool:
    """Whether sessions sign in: anything but an explicit `none` (which `grounding ui` sets on loopback only)."""
    return os.environ.get(AUTH_ENV, "token").strip().lower() != "none"


def current_principal():
    """The signed-in Principal (grounding.tokens), or None without a login; stops the page at the login form."""
    if not login_required():
        return None
    return require_login()


def current_user() -> str | None:
    """Whose grants the page applies: the signed-in user, the server's --user, or None (local trusted mode)."""
    if not login_required():
        return os.environ.get(USER_ENV) or None
    return require_login().user


def _oidc_configured() -> bool:
    try:
        return hasattr(st, "login") and "auth" in st.secrets
    except Exception:  # no secrets.toml at all: Streamlit raises rather than answer "no"
        return False


def _oidc_principal():
    """The Principal of a session signed in through Streamlit's OIDC (st.login), or None."""
    from grounding import tokens
    from grounding.access import user_name
    from grounding.config import get_settings
    from grounding.errors import InvalidArgument

    if not _oidc_configured() or not getattr(st.user, "is_logged_in", False):
        return None
    name = st.user.get(get_settings().oidc_user_claim)
    try:
        return tokens.Principal(user_name(name), via="oidc") if isinstance(name, str) and ":" not in name else None
    except InvalidArgument:
        return None


def sign_out() -> None:
    for key in (TOKEN_KEY, "chat", "ingest_job"):
        st.session_state.pop(key, None)
    if _oidc_configured() and getattr(st.user, "is_logged_in", False):
        st.logout()


def require_login():
    """The session's Principal; without a valid one, the login form, and the page stops there."""
    from grounding import tokens
    from grounding.errors import Unauthenticated

    token = st.session_state.get(TOKEN_KEY)
    if token:
        try:
            who = tokens.authenticate(token)  # on every rerun: a revoked or expired token ends the session here
        except Unauthenticated:
            sign_out()
            st.session_state["login_note"] = "Your token is no longer valid (revoked or expired): sign in again."
        else:
            return who
    elif (who := _oidc_principal()) is not None:
        return who
    _login_form()
    st.stop()


def _signed_in(who) -> None:
    with st.sidebar:
        st.caption(f"Signed in as **{who.user}**" + (" (admin)" if who.admin else ""))
        st.button("Sign out", key="sign_out", on_click=sign_out)


def _login_form() -> None:
    from grounding import tokens
    from grounding.errors import Unauthenticated

    st.title("Sign in to grounding")
    if note := st.session_state.pop("login_note", None):
        st.warning(note)
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
    if _oidc_configured():
        st.button("Sign in with your identity provider", on_click=st.login)


@contextlib.contextmanager
def errors_as_messages(what: str) -> Iterator[dict]:
    """Show what goes wrong inside as an error box, never as a traceback: a domain error's own message,
    anything else with its type (the traceback goes to the server log). Yields a dict that gets `error`."""
    outcome: dict = {}
    try:
        yield outcome
    except (GroundingError, ValueError, PermissionError) as err:
        outcome["error"] = f"{what}: {err}"
        st.error(outcome["error"])
    except Exception as err:  # the UI boundary: the server log keeps the traceback
        log.exception("%s failed", what)
        outcome["error"] = f"{what} failed unexpectedly ({type(err).__name__}: {err}); the server log has the details."
        st.error(outcome["error"])


def scope_or_stop() -> RepoScope:
    """The repositories this user may see, with the mode shown in the sidebar; stops the page if unreadable."""
    user = current_user()
    with errors_as_messages("Reading the repositories") as outcome:
        scope = repo_scope(user)
    if "error" in outcome:
        st.stop()
    if user is None and login_required():
        raise AssertionError("a page asked for the repositories of nobody while a login is required")
    if login_required():
        _signed_in(current_principal())
    if user is None:
        st.sidebar.warning(scope.note, icon=":material/lock_open:")
    else:
        st.sidebar.info(scope.note, icon=":material/person:")
    return scope


def when(value) -> str:
    """A timestamp for tables: local minutes, or an empty cell."""
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M")
