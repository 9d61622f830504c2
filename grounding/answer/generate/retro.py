"""The retro generator: a code prefix completed by the repository's RETRO model, citing the neighbours it read."""

from __future__ import annotations

from collections.abc import Iterator

from grounding.answer.generate.base import Generator
from grounding.answer.prompt import Prompt, looks_like_code, qualified, where
from grounding.records import Citation

COMPLETION_TOKENS = 64  # completions are a few lines; RETRO's context is short


def completion_lines(repo: str, prefix: str, text: str, citations: tuple[Citation, ...], *, language: str) -> list[str]:
    """The answer for a completion: the continuation in a fence, then the neighbours as [n]."""
    tail = prefix.rstrip("\n").split("\n")[-1]  # the line being completed, so the continuation reads whole
    fence = "````" if "```" in tail + text else "```"
    out = [f"Completion by the RETRO model of `{repo}`:", f"{fence}{language}", tail + text, fence]
    if citations:
        qualify = qualified(citations)
        read = ", ".join(f"`{where(c, qualify=qualify)}` [{n}]" for n, c in enumerate(citations, 1))
        out += ["", f"While writing it the model read {read}."]
    else:
        out += ["", "The model read no neighbour for it."]
    return out


class RetroGenerator(Generator):
    """Completes the question as code with the first repository's RETRO model.

    Chosen by name it always completes; as the configured default it completes only what looks like
    code and leaves questions to `fallback`.
    """

    name = "retro"
    needs_evidence = False  # the model retrieves its own neighbours while it decodes

    def __init__(self, *, always: bool = True, fallback: Generator | None = None, max_new_tokens: int = 64) -> None:
        self.always = always
        self.fallback = fallback
        self.max_new_tokens = min(max_new_tokens, COMPLETION_TOKENS)

    def stream_cited(self, prompt: Prompt) -> Iterator[str | tuple[Citation, ...]]:
        if not self.always and not looks_like_code(prompt.question) and self.fallback is not None:
            yield from self.fallback.stream_cited(prompt)
            return
        from grounding.answer.completion import complete

        if not prompt.repos:
            raise ValueError("the prompt names no repository whose RETRO model could complete it")
        repo = prompt.repos[0]
        result = complete(repo, prompt.question, max_new_tokens=self.max_new_tokens)
        yield result.citations
        language = prompt.citations_used[0].language if prompt.citations_used else None
        lines = completion_lines(repo, prompt.question, result.text, result.citations, language=language or "")
        for i, line in enumerate(lines):
            yield line + ("\n" if i < len(lines) - 1 else "")

    def stream(self, prompt: Prompt) -> Iterator[str]:
        for piece in self.stream_cited(prompt):
            if isinstance(piece, str):
                yield piece
