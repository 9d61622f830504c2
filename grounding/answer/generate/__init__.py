"""Answer generators: extractive (no model), hf (a local causal LM), openai (a compatible server), retro."""

from __future__ import annotations

from grounding.answer.generate.base import Generator
from grounding.answer.generate.extractive import ExtractiveGenerator
from grounding.config import get_settings
from grounding.errors import GeneratorUnavailable

GENERATORS = ("extractive", "hf", "openai", "retro")


def load_generator(name: str | None = None) -> Generator:
    """The generator `name`, or GROUNDING_GENERATOR's, set up from the settings."""
    settings = get_settings()
    if name is not None and not isinstance(name, str):
        raise GeneratorUnavailable(f"backend must be extractive, hf, openai or retro, not {name!r}")
    chosen = (name or settings.generator).strip().lower()
    if chosen == "extractive":
        return ExtractiveGenerator()
    if chosen == "hf":
        if not settings.generator_model:
            raise GeneratorUnavailable(
                "the hf generator needs a model: set GROUNDING_GENERATOR_MODEL to a local Hugging Face causal LM"
            )
        from grounding.answer.generate.hf import HFGenerator

        return HFGenerator(
            settings.generator_model,
            max_new_tokens=settings.answer_tokens,
            temperature=settings.generator_temperature,
        )
    if chosen == "openai":
        if not settings.openai_base_url or not settings.openai_model:
            raise GeneratorUnavailable(
                "the openai generator needs a server and a model: set GROUNDING_OPENAI_BASE_URL "
                "(e.g. http://localhost:8000/v1) and GROUNDING_OPENAI_MODEL"
            )
        from grounding.answer.generate.openai import OpenAIGenerator

        return OpenAIGenerator(
            settings.openai_base_url,
            settings.openai_model,
            api_key=settings.openai_api_key,
            max_tokens=settings.answer_tokens,
            temperature=settings.generator_temperature,
            timeout=settings.openai_timeout,
        )
    if chosen == "retro":
        from grounding.answer.generate.retro import RetroGenerator

        # Named for this call it always completes; as the default it leaves questions to the extractive one.
        return RetroGenerator(
            always=name is not None, fallback=ExtractiveGenerator(), max_new_tokens=settings.answer_tokens
        )
    raise GeneratorUnavailable(f"unknown generator {chosen!r}; choose one of {', '.join(GENERATORS)}")


__all__ = ["GENERATORS", "ExtractiveGenerator", "Generator", "load_generator"]
