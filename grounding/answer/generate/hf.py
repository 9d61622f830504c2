"""The hf generator: any local Hugging Face causal LM, greedy or sampled, streamed as it decodes."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from pathlib import Path

from grounding.answer.generate.base import Generator
from grounding.answer.prompt import Prompt
from grounding.errors import GeneratorUnavailable

TEMPLATE_MARGIN = 32  # tokens a chat template adds around the messages (role tags, turn markers)
STREAM_TIMEOUT_S = 600.0  # no token for this long: decoding is stuck, fail rather than hang


@functools.cache
def _load(path: str, device: str):
    """The tokenizer and model at `path`, loaded once per process (the same model answers every question)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(path).is_dir():
        raise GeneratorUnavailable(
            f"no causal LM at {path!r}; set GROUNDING_GENERATOR_MODEL to a local Hugging Face model directory"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise GeneratorUnavailable(f"cannot load a causal LM from {path!r}: {err}") from err
    model.to(device).eval()
    return tokenizer, model


class HFGenerator(Generator):
    """A local causal LM: chat template when the tokenizer has one, else a plain prompt."""

    name = "hf"

    def __init__(
        self, path: str, *, max_new_tokens: int = 512, temperature: float = 0.0, device: str | None = None
    ) -> None:
        from grounding.models.checkpoint import default_device

        self.path = str(path)
        self.tokenizer, self.model = _load(self.path, device or default_device())
        self.temperature = temperature
        self.context_tokens = _context_length(self.model.config)
        # An answer never takes more than half the context: the evidence needs the rest.
        self.max_new_tokens = min(max_new_tokens, self.context_tokens // 2) if self.context_tokens else max_new_tokens

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_budget(self, budget: int) -> int:
        if self.context_tokens is None:
            return budget
        return max(0, min(budget, self.context_tokens - self.max_new_tokens - TEMPLATE_MARGIN))

    def render(self, prompt: Prompt) -> str:
        """The text the model reads: the chat template applied, or system, user and an answer cue."""
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}]
            from jinja2 import TemplateError

            try:
                return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except TemplateError:  # templates that refuse a system role (Gemma, Mistral): fold it into the user turn
                merged = [{"role": "user", "content": f"{prompt.system}\n\n{prompt.user}"}]
                return self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
        return f"{prompt.system}\n\n{prompt.user}\n\nAnswer:"

    def stream(self, prompt: Prompt) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteriaList

        # The template already holds the special tokens the model needs.
        ids = self.tokenizer(self.render(prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
        if self.context_tokens:
            ids = ids[:, -(self.context_tokens - self.max_new_tokens) :]  # keep the question, at the end
        ids = ids.to(self.model.device)
        streamer = _token_streamer(self.tokenizer)
        eos = self.tokenizer.eos_token_id
        stopped = threading.Event()  # set when the reader stops early: decoding stops too
        options = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "max_new_tokens": self.max_new_tokens,
            "streamer": streamer,
            "pad_token_id": self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos,
            "do_sample": self.temperature > 0,
            "stopping_criteria": StoppingCriteriaList([_stop_when(stopped)]),
        }
        if self.temperature > 0:
            options["temperature"] = self.temperature
        failed: list[BaseException] = []

        def decode() -> None:
            try:
                self.model.generate(**options)
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread below
                failed.append(err)
                streamer.end()

        thread = threading.Thread(target=decode, name="hf-generate", daemon=True)
        thread.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            stopped.set()
            thread.join()
        if failed:
            raise GeneratorUnavailable(f"the causal LM at {self.path!r} failed while generating: {failed[0]}")


def _token_streamer(tokenizer):
    """A TextIteratorStreamer that gives out each token's text at once; the stock one waits for a space."""
    from transformers import TextIteratorStreamer

    class _TokenStreamer(TextIteratorStreamer):
        def put(self, value) -> None:
            value = value[0] if len(value.shape) > 1 else value  # batch of one
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.tolist())
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            if text.endswith("\ufffd"):
                return  # a character split across tokens: wait for the rest of its bytes
            self.on_finalized_text(text[self.print_len :])
            self.print_len = len(text)

    return _TokenStreamer(tokenizer, skip_prompt=True, timeout=STREAM_TIMEOUT_S, skip_special_tokens=True)


def _stop_when(event: threading.Event):
    import torch
    from transformers import StoppingCriteria

    class _Stopped(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return _Stopped()


def _context_length(config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "seq_length", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
