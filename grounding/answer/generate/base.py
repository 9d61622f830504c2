"""The Generator interface: a prompt with numbered evidence in, the answer's text out in pieces."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

from grounding.answer.prompt import Prompt, approx_tokens
from grounding.records import Citation


class Generator(ABC):
    """Writes an answer from a Prompt; its [n] markers refer to the prompt's evidence."""

    name: str = ""
    needs_evidence = True  # with no evidence there is nothing to answer from: `ask` says so itself

    @abstractmethod
    def stream(self, prompt: Prompt) -> Iterator[str]:
        """The answer's text in pieces, as they are written."""

    def generate(self, prompt: Prompt) -> str:
        """The whole answer's text."""
        return "".join(self.stream(prompt))

    def stream_cited(self, prompt: Prompt) -> Iterator[str | tuple[Citation, ...]]:
        """First the citations the text's [n] refer to (the prompt's, unless the backend read its own), then text."""
        yield prompt.citations_used
        yield from self.stream(prompt)

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as this generator's model counts them (an estimate when there is no model)."""
        return approx_tokens(text)

    def prompt_budget(self, budget: int) -> int:
        """The prompt budget to pack to: `budget`, or less where the model's context is shorter."""
        return budget
