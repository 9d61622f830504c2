"""ask(repo, question): retrieve the evidence, then answer with it, every location cited."""

from __future__ import annotations

from grounding.records import Answer
from grounding.retrieve import search


def ask(repo: str, question: str, *, k: int = 5) -> Answer:
    """Answer `question` from repository `repo` with its k best pieces of code, each cited to file and line.

    For now the text lists the cited locations and symbols; generated answers come with the copilot.
    """
    if not question.strip():
        raise ValueError("the question is empty")
    hits = search(repo, question, k=k)
    citations = tuple(h.citation for h in hits)
    if not citations:
        return Answer(question, f"No code in {repo!r} matches this question.", citations)
    lines = [f"The most relevant code in {repo!r}:"]
    for i, c in enumerate(citations, 1):
        what = f" {c.kind} `{c.symbol}`" if c.symbol else f" {c.kind}"
        lines.append(f"[{i}] {c.location} —{what}")
    return Answer(question, "\n".join(lines), citations)
