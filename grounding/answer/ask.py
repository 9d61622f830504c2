"""ask(repos, question): retrieve from each repository, fuse, pack the numbered evidence, generate, cite.

Several repositories are fused by rank: each repository's final list (fused, and reranked where that
repository has a reranker) counts 1/(rrf_k + rank) for its hits, so lists whose scores are on different
scales (reciprocal-rank sums, a cross-encoder's logits) interleave fairly: ties go to the repository
named first. Within one repository the order is the one `search` returned.

Filters may be written inline in the question (`path:src/** lang:python kind:function ...`); they are
parsed here, once, for the Python API, the CLI and the copilot alike, and add to `filters`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from grounding import validation
from grounding.answer.generate import load_generator
from grounding.answer.prompt import MarkerFilter, build_prompt
from grounding.config import get_settings
from grounding.records import Answer, Citation, Hit
from grounding.search.filters import with_inline_filters

log = logging.getLogger(__name__)


def fuse(rankings: Sequence[Sequence[Hit]], *, k: int) -> list[Hit]:
    """The k best hits of several repositories' final rankings, by rank (see the module docstring)."""
    rrf_k = get_settings().rrf_k
    keyed = [
        (-1.0 / (rrf_k + rank + 1), order, rank, hit)
        for order, hits in enumerate(rankings)
        for rank, hit in enumerate(hits)
    ]
    return [hit for *_, hit in sorted(keyed, key=lambda item: item[:3])[:k]]


def evidence(repos: Sequence[str], question: str, *, k: int, filters=None, user=None) -> tuple[Citation, ...]:
    """The k best citations for `question` over all `repos`, best first, as `user` may read them."""
    from grounding.search.retrieve import search

    extra = {} if filters is None else {"filters": filters}
    rankings = [search(repo, question, k=k, user=user, **extra) for repo in repos]
    return tuple(hit.citation for hit in fuse(rankings, k=k))


def ask_stream(
    repos: str | Sequence[str],
    question: str,
    *,
    k: int = 5,
    user: str | None = None,
    filters=None,
    backend: str | None = None,
) -> Iterator[str | Answer]:
    """`ask`, as it is written: text deltas, then the Answer (whose text is the deltas joined) last."""
    names = validation.repo_names(repos)
    question = validation.question(question)
    k = validation.count(k, "k")
    user = validation.user(user)
    if user is not None:
        from grounding.access import authorize

        authorize(user, names)
    question, filters = with_inline_filters(question, filters)
    generator = load_generator(backend)
    citations = evidence(names, question, k=k, filters=filters, user=user)
    settings = get_settings()
    prompt = build_prompt(
        question,
        citations,
        budget_tokens=generator.prompt_budget(settings.prompt_tokens),
        count_tokens=generator.count_tokens,
        repos=names,
    )
    if not citations and generator.needs_evidence:
        text = f"No code in {' or '.join(repr(n) for n in names)} matches this question."
        yield text
        yield Answer(question, text, (), backend=generator.name, repos=names)
        return
    pieces = generator.stream_cited(prompt)
    cited = next(pieces)  # what the [n] refer to: the packed evidence, or the neighbours RETRO read
    markers = MarkerFilter(len(cited))
    written: list[str] = []
    for piece in pieces:
        if out := markers.feed(piece):
            written.append(out)
            yield out
    if out := markers.flush():
        written.append(out)
        yield out
    if markers.invented:
        log.warning("%s cited evidence that does not exist, dropped: %s", generator.name, sorted(set(markers.invented)))
    yield Answer(question, "".join(written), tuple(cited), backend=generator.name, repos=names)


def ask(
    repos: str | Sequence[str],
    question: str,
    *,
    k: int = 5,
    user: str | None = None,
    filters=None,
    backend: str | None = None,
) -> Answer:
    """Answer `question` from one or more repositories' k best pieces of code, [n] citing Citation n.

    `backend` picks the generator (extractive, hf, openai, retro; default GROUNDING_GENERATOR); with
    `user`, access to every repository is checked first (grounding.access.authorize).
    """
    answer = None
    for piece in ask_stream(repos, question, k=k, user=user, filters=filters, backend=backend):
        if isinstance(piece, Answer):
            answer = piece
    assert answer is not None, "ask_stream ends with its Answer"
    return answer
