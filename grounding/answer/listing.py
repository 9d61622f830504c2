"""A citation as its file shows it: the file's own line numbers, the cited lines marked, a little context.

The context comes from the stored chunks of the same file (the index holds no other copy of the code), and
only when the file the repository shows now still has the cited lines as cited: after a newer ingest
changed them, the listing is the cited lines alone. Lines between chunks are blank (the chunker leaves
nothing else out), so a gap inside the stored range is shown as an empty line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grounding import validation
from grounding.errors import InvalidArgument
from grounding.records import Citation

CONTEXT_LINES = 3  # above and below the cited lines: enough to see the enclosing line or the next definition


@dataclass(frozen=True)
class ListingLine:
    """One line of a listing: its number in the file, its text, and whether the citation names it."""

    number: int
    text: str
    cited: bool


def listing_lines(citation: Citation, spans: Sequence, *, context: int = CONTEXT_LINES) -> tuple[ListingLine, ...]:
    """The cited lines with up to `context` lines either side taken from `spans` (store.ChunkSpan of the file);
    without context if the stored lines of the cited span differ from the citation's snippet."""
    cited = [ListingLine(citation.start_line + i, t, True) for i, t in enumerate(citation.snippet.split("\n"))]
    known: dict[int, str] = {}
    for span in spans:
        for i, line in enumerate(span.text.split("\n")):
            known.setdefault(span.start_line + i, line)
    if not known or any(known.get(line.number, "") != line.text for line in cited if line.text.strip()):
        return tuple(cited)  # the file moved on since this citation was made: no context from another version
    lo, hi = min(known), max(known)
    first, last = cited[0].number, cited[-1].number
    before = [ListingLine(n, known.get(n, ""), False) for n in range(max(lo, first - context), first)]
    after = [ListingLine(n, known.get(n, ""), False) for n in range(last + 1, min(hi, last + context) + 1)]
    return (*before, *cited, *after)


def listing(citation: Citation, *, context: int = CONTEXT_LINES, user: str | None = None) -> tuple[ListingLine, ...]:
    """`citation`'s lines with `context` lines around them, numbered as in the file; `user` must be allowed to
    read the citation's repository (None: a trusted local caller)."""
    from grounding import db, store

    if not isinstance(citation, Citation):
        raise InvalidArgument(f"listing needs a Citation, not {type(citation).__name__}")
    validation.repo_name(citation.repo, derived_ok=True)
    context = validation.count(context, "context", minimum=0, maximum=50)
    user = validation.user(user)
    if user is not None:
        from grounding.access import authorize

        authorize(user, [citation.repo])
    first, last = citation.start_line - context, citation.end_line + context
    with db.get_engine().connect() as conn:
        commit, spans = store.file_lines(conn, citation.repo, citation.path, first=first, last=last)
    if citation.commit and commit and commit != citation.commit:
        spans = []
    return listing_lines(citation, spans, context=context)


# Inline styles only: the page sanitises HTML (DOMPurify), and a <style> block may not survive it.
_BOX = (
    "font-family: 'Source Code Pro', ui-monospace, monospace; font-size: 0.85rem; line-height: 1.45; "
    "background: #f8f8fa; border-radius: 0.5rem; padding: 0.5rem 0; overflow: auto; {height}"
)
_ROW = "display: flex; white-space: pre; width: max-content; min-width: 100%; {background}"
_CITED_BACKGROUND = "background: #fff3bf; box-shadow: inset 3px 0 #f0b400;"
_NUMBER = "user-select: none; min-width: {width}ch; padding: 0 1em 0 0.75em; text-align: right; color: {color};"
_CODE = "padding-right: 1em; {dim}"


def listing_html(lines: Sequence[ListingLine], language: str | None, *, max_height_px: int | None = None) -> str:
    """`lines` as highlighted HTML: one row per line, `data-line` its number in the file and `data-cited` on the
    cited rows, the number in a gutter that copying leaves out. The code is escaped by Pygments."""
    import html

    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    text = "\n".join(line.text for line in lines)
    try:
        lexer = get_lexer_by_name(language or "text", stripnl=False, stripall=False, ensurenl=True)
    except ClassNotFound:
        lexer = get_lexer_by_name("text", stripnl=False, ensurenl=True)
    rows = highlight(text, lexer, HtmlFormatter(nowrap=True, noclasses=True, style="default")).split("\n")
    if len(rows) < len(lines):  # a lexer that ate a line break: plain escaped text, never misnumbered lines
        rows = [html.escape(line.text) for line in lines]
    width = len(str(lines[-1].number)) if lines else 1
    out = []
    for line, row in zip(lines, rows, strict=False):
        background = _CITED_BACKGROUND if line.cited else ""
        number = _NUMBER.format(width=width, color="#6e6e80" if line.cited else "#b0b0bb")
        code = _CODE.format(dim="" if line.cited else "opacity: 0.6;")
        out.append(
            f'<div data-line="{line.number}"{" data-cited" if line.cited else ""} '
            f'style="{_ROW.format(background=background)}"><span class="ln" style="{number}">{line.number}</span>'
            f'<span style="{code}">{row or " "}</span></div>'
        )
    height = f"max-height: {int(max_height_px)}px;" if max_height_px else ""
    return f'<div class="grounding-listing" style="{_BOX.format(height=height)}">{"".join(out)}</div>'
