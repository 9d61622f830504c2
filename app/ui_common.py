"""What every page of the copilot shares: the user, the repositories they may see, errors shown as messages.

`streamlit run app/copilot.py` puts this directory on sys.path, so pages import it as `ui_common`.
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


def current_user() -> str | None:
    """The user the server was started for; None is local trusted mode."""
    return os.environ.get(USER_ENV) or None


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
    if user is None:
        st.sidebar.warning(scope.note, icon=":material/lock_open:")
    else:
        st.sidebar.info(scope.note, icon=":material/person:")
    return scope


def when(value) -> str:
    """A timestamp for tables: local minutes, or an empty cell."""
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M")
