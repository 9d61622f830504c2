"""The openai generator: any OpenAI-compatible chat endpoint (vLLM, Ollama, TGI), streamed over SSE."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator

import httpx

from grounding.answer.generate.base import Generator
from grounding.answer.prompt import Prompt
from grounding.errors import GeneratorUnavailable

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 10.0


def chat_url(base_url: str) -> str:
    """`.../v1/chat/completions` from a base URL given with or without its `/v1`."""
    base = base_url.rstrip("/")
    return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"


def request_body(prompt: Prompt, *, model: str, max_tokens: int, temperature: float) -> dict:
    """The chat completion request: system and user messages, streamed."""
    return {
        "model": model,
        "messages": [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}],
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": temperature,
    }


def parse_sse(lines: Iterable[str], *, source: str) -> Iterator[str]:
    """The content deltas of a streamed chat completion's `data:` lines, up to `data: [DONE]`."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, `: keep-alive` comments, `event:` and `id:` fields
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield from _content(_json(data, source), source, key="delta")


def _json(data: str, source: str) -> dict:
    try:
        payload = json.loads(data)
    except ValueError as err:
        raise GeneratorUnavailable(f"{source} sent a chunk that is not JSON: {data[:200]!r}") from err
    if not isinstance(payload, dict):
        raise GeneratorUnavailable(f"{source} sent {data[:200]!r}, not a chat completion chunk")
    if "error" in payload:
        error = payload["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise GeneratorUnavailable(f"{source} reported an error: {message}")
    return payload


def _content(payload: dict, source: str, *, key: str) -> Iterator[str]:
    choices = payload.get("choices")
    if not isinstance(choices, list):
        raise GeneratorUnavailable(f"{source} sent a reply without choices: {json.dumps(payload)[:200]}")
    for choice in choices[:1]:  # one answer was asked for
        content = (choice.get(key) or {}).get("content") if isinstance(choice, dict) else None
        if content:
            yield content


class OpenAIGenerator(Generator):
    """A model served behind POST /v1/chat/completions, read as it streams."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        timeout: float = 120.0,
    ) -> None:
        self.url = chat_url(base_url)
        self.model = model
        self.api_key = api_key
        self.max_tokens = max_tokens
        self.temperature = temperature
        # `read` bounds the wait for each piece, not the whole answer: a long answer streams on.
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S))

    def stream(self, prompt: Prompt) -> Iterator[str]:
        body = request_body(prompt, model=self.model, max_tokens=self.max_tokens, temperature=self.temperature)
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        source = f"the OpenAI-compatible server at {self.url}"
        try:
            with httpx.stream("POST", self.url, json=body, headers=headers, timeout=self.timeout) as response:
                if response.status_code != 200:
                    detail = response.read().decode("utf-8", "replace").strip()[:300]
                    raise GeneratorUnavailable(
                        f"{source} answered HTTP {response.status_code}"
                        f"{': ' + detail if detail else ''} (model {self.model!r})"
                    )
                if "text/event-stream" in response.headers.get("content-type", ""):
                    yield from parse_sse(response.iter_lines(), source=source)
                else:  # a server that ignores stream=true sends the whole completion at once
                    response.read()
                    yield from _content(_json(response.text, source), source, key="message")
        except httpx.ConnectError as err:
            raise GeneratorUnavailable(
                f"cannot connect to {source} ({err}); start the server or set GROUNDING_OPENAI_BASE_URL"
            ) from err
        except httpx.TimeoutException as err:
            raise GeneratorUnavailable(f"{source} did not answer within {self.timeout.read:g}s ({err!r})") from err
        except httpx.HTTPError as err:
            raise GeneratorUnavailable(f"{source} failed: {err!r}") from err
