"""The copilot's chat: ask about the repositories you may read; the answer streams in, then its cited code."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import streamlit as st
from ui_common import current_user, errors_as_messages, log, scope_or_stop

from grounding.errors import GroundingError
from grounding.records import Answer, Citation

if TYPE_CHECKING:
    from grounding.answer.listing import ListingLine
    from grounding.search.retrieve import SearchFilters

st.set_page_config(page_title="grounding copilot", page_icon=":material/code:", layout="wide")

CODE_HEIGHT = 520  # pixels: a longer listing scrolls inside its box
FILTER_HINT = "filters: path:src/** lang:python kind:function"


def filter_text(filters: SearchFilters) -> str:
    """`path src/** · lang python`: the filters parse_query found, for a caption; empty when none."""
    shown = {"paths": "path", "exclude_paths": "-path", "languages": "lang", "kinds": "kind", "roles": "role"}
    return " · ".join(
        f"{shown.get(name, name)} {', '.join(values)}" for name, values in dataclasses.asdict(filters).items() if values
    )


def citation_label(n: int, citation: Citation, *, with_repo: bool) -> str:
    # As code: a label is markdown, where `requests/__init__.py` would lose its underscores to bold.
    role = f" · {citation.role}" if citation.role and citation.role != "source" else ""
    return f"[{n}] `{citation.location}`{role}" + (f" · {citation.repo}" if with_repo else "")


def listings_of(citations: Sequence[Citation], *, user: str | None) -> list[tuple[ListingLine, ...]]:
    """Each citation's lines with a little context, numbered as in its file; read once, kept with the message."""
    from grounding.answer.listing import listing, listing_lines

    found = []
    for c in citations:
        try:
            found.append(listing(c, user=user))
        except GroundingError as err:  # the context is a courtesy: the cited lines alone still show
            log.warning("no context for %s: %s", c.location, err)
            found.append(listing_lines(c, []))
    return found


def show_citations(citations: Sequence[Citation], listings: Sequence[tuple[ListingLine, ...]] = ()) -> None:
    from grounding.answer.listing import listing_html, listing_lines

    with_repo = len({c.repo for c in citations}) > 1
    for n, c in enumerate(citations, 1):
        with st.expander(citation_label(n, c, with_repo=with_repo), expanded=n == 1):
            about = [f"{c.kind} `{c.symbol}`" if c.symbol else (c.kind or ""), f"score {c.score:.3f}"]
            about.append(f"lines {c.start_line}-{c.end_line} of `{c.path}` highlighted")
            st.caption(" · ".join(a for a in about if a))
            lines = listings[n - 1] if n <= len(listings) else listing_lines(c, [])
            st.html(listing_html(lines, c.language, max_height_px=CODE_HEIGHT))


def backend_note(backend: str) -> str:
    """Who wrote the answer, shown under it."""
    if backend == "extractive":
        return "No generator is configured: this is search's ranking of the code, not a written answer."
    return f"Written by the `{backend}` generator from the cited code: check it against the citations."


def show_message(message: dict) -> None:
    with st.chat_message(message["role"]):
        if message.get("error"):
            st.error(message["error"])
            return
        st.markdown(message["content"])
        if message.get("backend"):
            st.caption(backend_note(message["backend"]))
        if message.get("citations"):
            show_citations(message["citations"], message.get("listings", ()))


def ask_and_show(repos: list[str], text: str, *, k: int, user: str | None) -> dict:
    """Stream one answer into the page; returns the assistant's message for the history."""
    message = {"role": "assistant", "content": "", "citations": ()}
    final: dict = {}
    with errors_as_messages("Answering") as outcome:
        from grounding import ask_stream
        from grounding.search.retrieve import parse_query

        _, filters = parse_query(text)  # only to show them: ask_stream parses the question's filters itself
        if applied := filter_text(filters):
            st.caption(f"Filters: {applied}")

        def deltas() -> Iterator[str]:
            for event in ask_stream(repos, text, k=k, user=user):
                if isinstance(event, Answer):
                    final["answer"] = event
                else:
                    yield event

        streamed = st.write_stream(deltas())
        answer = final.get("answer")
        if answer is None:
            raise ValueError("the answer ended before its citations arrived")
        if not streamed:
            st.markdown(answer.text)
        listings = listings_of(answer.citations, user=user)
        message.update(content=answer.text, citations=answer.citations, listings=listings, backend=answer.backend)
        st.caption(backend_note(answer.backend))
        show_citations(answer.citations, listings)
    if "error" in outcome:
        message["error"] = outcome["error"]
    return message


user = current_user()  # first: with a login on, the sign-in form stops the page here
st.title("Copilot")
scope = scope_or_stop()
if not scope.repos:
    st.info("No repository to ask about yet. Ingest one on the Ingest page, or with `grounding ingest PATH`.")
    st.stop()

linked = [name for name in st.query_params.get_all("repo") if name in scope.names]  # ?repo=billing&repo=api
repos = st.sidebar.multiselect(
    "Repositories", scope.names, default=linked or scope.names[:1], key="repos", help="the answer cites code from these"
)
k = st.sidebar.slider("Citations", 1, 10, 5, key="k")
if st.sidebar.button("Clear the conversation"):
    st.session_state["chat"] = []
history: list[dict] = st.session_state.setdefault("chat", [])
for message in history:
    show_message(message)

text = st.chat_input(f"Ask about {', '.join(repos) or 'the code'} ({FILTER_HINT})", key="question")
if text:
    if not repos:
        st.warning("Choose at least one repository in the sidebar.")
    else:
        history.append({"role": "user", "content": text})
        show_message(history[-1])
        with st.chat_message("assistant"):
            history.append(ask_and_show(repos, text, k=k, user=user))
