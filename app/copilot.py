"""The copilot's chat: ask about the repositories you may read; the answer streams in, then its cited code."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import streamlit as st
from ui_common import current_user, errors_as_messages, scope_or_stop

from grounding.records import Answer, Citation

if TYPE_CHECKING:
    from grounding.search.retrieve import SearchFilters

st.set_page_config(page_title="grounding copilot", page_icon=":material/code:", layout="wide")

# Prism's names where grounding's language names differ; None: plain text.
PRISM = {"shell": "bash", "make": "makefile", "text": None, "rst": None, "cmake": None}
CODE_LINES, CODE_HEIGHT = 24, 520  # a citation longer than CODE_LINES shows in a box CODE_HEIGHT pixels high
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


def show_citations(citations: Sequence[Citation]) -> None:
    with_repo = len({c.repo for c in citations}) > 1
    for n, c in enumerate(citations, 1):
        with st.expander(citation_label(n, c, with_repo=with_repo), expanded=n == 1):
            about = [f"{c.kind} `{c.symbol}`" if c.symbol else (c.kind or ""), f"score {c.score:.3f}"]
            if c.start_line != 1:  # st.code numbers from 1
                about.append(f"listing line 1 is line {c.start_line} of `{c.path}`")
            st.caption(" · ".join(a for a in about if a))
            long = c.end_line - c.start_line >= CODE_LINES
            st.code(
                c.snippet,
                language=PRISM.get(c.language or "text", c.language),
                line_numbers=True,
                height=CODE_HEIGHT if long else "content",  # a long one scrolls inside its box
            )


def show_message(message: dict) -> None:
    with st.chat_message(message["role"]):
        if message.get("error"):
            st.error(message["error"])
            return
        st.markdown(message["content"])
        if message.get("citations"):
            show_citations(message["citations"])


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
        message.update(content=answer.text, citations=answer.citations)
        show_citations(answer.citations)
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
