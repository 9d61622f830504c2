"""Generators: extractive answers from the evidence, a tiny local causal LM, an OpenAI-compatible loopback server."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from grounding.answer.generate import ExtractiveGenerator, load_generator
from grounding.answer.generate.extractive import best_lines
from grounding.answer.generate.retro import RetroGenerator, completion_lines
from grounding.answer.prompt import build_prompt, cited_numbers
from grounding.config import reset_settings
from grounding.errors import GeneratorUnavailable
from grounding.records import Citation
from tests.conftest import package_tree

SESSIONS = (package_tree("requests") / "sessions.py").read_text().split("\n")


def cite(symbol: str, *, repo: str = "requests") -> Citation:
    """The citation of the chunk of requests/sessions.py that holds `symbol`, as the chunker cuts it."""
    from grounding.index.chunking import RegexTokenCounter, chunk_file

    data = (package_tree("requests") / "sessions.py").read_bytes()
    chunks = chunk_file("sessions.py", data, "python", max_tokens=400, counter=RegexTokenCounter())
    c = next(c for c in chunks if c.symbol == symbol)
    return Citation(repo, c.path, c.start_line, c.end_line, "0123456789abcdef", 0.5, c.text, c.symbol, c.kind, "python")


EVIDENCE = [
    cite("SessionRedirectMixin.resolve_redirects"),
    cite("Session.send"),
    cite("Session.merge_environment_settings"),
]
QUESTION = "how does a session follow redirects and rebuild the method for each redirect?"


def prompt_for(question: str = QUESTION, evidence=EVIDENCE, **kw):
    return build_prompt(question, evidence, budget_tokens=kw.pop("budget", 10_000), repos=["requests"], **kw)


# --- extractive --------------------------------------------------------------------------------------


def test_extractive_lists_the_ranked_code_and_never_phrases_it_as_an_answer():
    prompt = prompt_for()
    text = ExtractiveGenerator().generate(prompt)
    top = EVIDENCE[0]
    lines = text.split("\n")
    assert lines[0] == "No model wrote this: the code in `requests` most relevant to the question, as search ranked it."
    assert lines[-1] == "Set GROUNDING_GENERATOR (hf, openai) for a written answer."
    assert lines[2] == (
        f"- `sessions.py:{top.start_line}-{top.end_line}` [1]: part of `SessionRedirectMixin.resolve_redirects`, "
        "which mentions `session`, `redirects`"
    ), "where, what, and why it was chosen"
    assert not re.search(r"\b(answer is|the answer|is answered|here is how)\b", text, re.I), "a ranking, not an answer"
    assert set(cited_numbers(text)) == {1, 2, 3}, "every piece of evidence cited, none invented"
    # The quotation is real lines, at the numbers it gives.
    quote = re.search(r"Lines (\d+)-(\d+) of `sessions.py` \[1\][^\n]*:\n```python\n(.*?)\n```", text, re.S)
    assert quote, text
    start, end, body = int(quote[1]), int(quote[2]), quote[3]
    assert top.start_line <= start <= end <= top.end_line and end - start < 8
    assert body.split("\n") == SESSIONS[start - 1 : end]
    assert "redirect" in body.lower() and "which mention `redirects`" in text, "the words as asked"
    for n, c in enumerate(EVIDENCE[1:], 2):
        assert f"- `sessions.py:{c.start_line}-{c.end_line}` [{n}]: " in text
    assert not re.search(r"^\d+\. ", text, re.M), "bullets: Markdown would renumber a numbered list"


def test_extractive_says_when_a_piece_holds_none_of_the_question_words():
    text = ExtractiveGenerator().generate(prompt_for("zebra quagga okapi"))
    assert text.count("found by meaning alone (it holds none of the question's words)") == len(EVIDENCE)


def test_extractive_lists_tests_and_docs_under_their_own_heading():
    import dataclasses

    as_test = dataclasses.replace(EVIDENCE[1], path="tests/test_sessions.py", role="test")
    evidence = [EVIDENCE[0], as_test, dataclasses.replace(EVIDENCE[2], role="source")]
    text = ExtractiveGenerator().generate(prompt_for(evidence=evidence))
    implementation, _, others = text.partition("Tests, docs and examples:")
    assert f"- `sessions.py:{EVIDENCE[2].start_line}-{EVIDENCE[2].end_line}` [3]: " in implementation
    assert f"- `tests/test_sessions.py:{as_test.start_line}-{as_test.end_line}` [2] (test): " in others
    assert set(cited_numbers(text)) == {1, 2, 3}


def test_best_lines_is_the_window_with_most_shared_terms():
    snippet = "def f():\n    a = 1\n    b = 2\n    cookie = jar.cookie\n    return cookie\n    c = 3"
    assert best_lines(snippet, ["cookie", "jar"], width=3) == (3, 6), "from the first matching line on"
    assert best_lines(snippet, ["nothing"], width=3) == (0, 3), "no shared term: the signature"


def test_extractive_streams_in_pieces_that_join_to_the_answer():
    prompt = prompt_for()
    pieces = list(ExtractiveGenerator().stream(prompt))
    assert len(pieces) > 5 and "".join(pieces) == ExtractiveGenerator().generate(prompt)


def test_extractive_with_no_evidence_says_so():
    text = ExtractiveGenerator().generate(build_prompt("q", [], budget_tokens=1000, repos=["a", "b"]))
    assert text == "No code in 'a' or 'b' matches this question." and cited_numbers(text) == []


def test_extractive_names_the_repository_when_several_are_cited():
    evidence = [EVIDENCE[0], cite("Session.send", repo="fork")]
    text = ExtractiveGenerator().generate(build_prompt(QUESTION, evidence, budget_tokens=10_000))
    assert "`requests/sessions.py:" in text and "`fork/sessions.py:" in text


# --- choosing a generator ----------------------------------------------------------------------------


def test_load_generator_follows_the_settings_and_says_what_is_missing(monkeypatch):
    assert load_generator().name == "extractive"
    with pytest.raises(GeneratorUnavailable, match="unknown generator 'gpt'.*extractive, hf, openai, retro"):
        load_generator("gpt")
    with pytest.raises(GeneratorUnavailable, match="GROUNDING_GENERATOR_MODEL"):
        load_generator("hf")
    with pytest.raises(GeneratorUnavailable, match="GROUNDING_OPENAI_BASE_URL"):
        load_generator("openai")
    monkeypatch.setenv("GROUNDING_GENERATOR_MODEL", "/no/such/model")
    reset_settings()
    with pytest.raises(GeneratorUnavailable, match="no causal LM at '/no/such/model'"):
        load_generator("hf")
    monkeypatch.setenv("GROUNDING_GENERATOR", "retro")
    reset_settings()
    default, chosen = load_generator(), load_generator("retro")
    assert default.name == chosen.name == "retro" and not default.always and chosen.always


# --- hf: a tiny local causal LM -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 built from a config with a BPE tokenizer trained on requests: a local model, no download."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from grounding.index.lm_tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = train_tokenizer([p.read_text() for p in sorted(package_tree("requests").glob("*.py"))], vocab_size=512)
    tokenizer.save(path)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=1024,
        bos_token_id=tokenizer.eos_id,
        eos_token_id=tokenizer.eos_id,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


def test_hf_streams_token_by_token_within_its_limits(tiny_causal_lm):
    from grounding.answer.generate.hf import HFGenerator

    generator = HFGenerator(str(tiny_causal_lm), max_new_tokens=24, device="cpu")
    prompt = build_prompt(
        QUESTION, EVIDENCE, budget_tokens=generator.prompt_budget(3000), count_tokens=generator.count_tokens
    )
    assert generator.prompt_budget(3000) == 1024 - 24 - 32, "the context bounds the prompt"
    assert generator.count_tokens(prompt.system) + generator.count_tokens(prompt.user) <= 1024 - 24
    pieces = list(generator.stream(prompt))
    text = "".join(pieces)
    assert 1 < len(pieces) <= 24 and text, "a piece per token or so, never more than max_new_tokens"
    assert generator.generate(prompt) == text, "greedy: the same answer twice"
    assert generator.render(prompt).endswith("cite [n] after each claim.\n\nAnswer:"), "no chat template: plain"


def test_hf_answers_never_take_more_than_half_the_context(tiny_causal_lm):
    from grounding.answer.generate.hf import HFGenerator

    assert HFGenerator(str(tiny_causal_lm), max_new_tokens=4096, device="cpu").max_new_tokens == 512


def test_hf_uses_the_chat_template_when_the_tokenizer_has_one(tiny_causal_lm, tmp_path):
    import shutil

    from grounding.answer.generate.hf import HFGenerator

    chat = tmp_path / "chat"
    shutil.copytree(tiny_causal_lm, chat)
    config = json.loads((chat / "tokenizer_config.json").read_text())
    config["chat_template"] = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    (chat / "tokenizer_config.json").write_text(json.dumps(config))
    generator = HFGenerator(str(chat), max_new_tokens=8, device="cpu")
    prompt = prompt_for()
    rendered = generator.render(prompt)
    assert rendered.startswith(f"<|system|>{prompt.system}\n<|user|>{prompt.user}") and rendered.endswith(
        "<|assistant|>"
    )
    assert list(generator.stream(prompt)), "it still generates"


def test_hf_stops_decoding_when_the_reader_stops(tiny_causal_lm):
    from grounding.answer.generate.hf import HFGenerator

    generator = HFGenerator(str(tiny_causal_lm), max_new_tokens=500, device="cpu")
    stream = generator.stream(prompt_for())
    next(stream)
    started = time.perf_counter()
    stream.close()  # joins the decoding thread: it must stop within a token, not run 500
    assert time.perf_counter() - started < 5
    assert not any(t.name == "hf-generate" and t.is_alive() for t in threading.enumerate())


# --- openai: a loopback OpenAI-compatible server ------------------------------------------------------


class _ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ChatHandler)
        self.requests: list[dict] = []
        self.mode = "stream"
        self.reply = ["The session ", "follows redirects ", "in `resolve_redirects` [1]", "."]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _ChatHandler(BaseHTTPRequestHandler):
    server: _ChatServer

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        mode = self.server.mode
        if mode == "http-error":
            return self._send(404, "application/json", b'{"error": {"message": "model \'nope\' does not exist"}}')
        if mode == "slow":
            time.sleep(3)
        if mode == "whole":
            message = {"choices": [{"message": {"role": "assistant", "content": "".join(self.server.reply)}}]}
            return self._send(200, "application/json", json.dumps(message).encode())
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        events = {
            "garbage": ["data: {not json"],
            "error-event": ['data: {"error": {"message": "CUDA out of memory"}}'],
        }.get(mode)
        if events is None:
            chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
            chunks += [{"choices": [{"index": 0, "delta": {"content": piece}}]} for piece in self.server.reply]
            chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            events = [": keep-alive"] + [f"data: {json.dumps(c)}" for c in chunks] + ["data: [DONE]"]
        for event in events:
            self.wfile.write(f"{event}\n\n".encode())
            self.wfile.flush()

    def _send(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def openai_server():
    """An OpenAI-compatible chat server on 127.0.0.1 that streams `reply` and records every request."""
    server = _ChatServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def openai_generator(url: str, **kw):
    from grounding.answer.generate.openai import OpenAIGenerator

    return OpenAIGenerator(url, "qwen2.5-coder-7b", **kw)


def test_openai_streams_the_answer_and_sends_the_numbered_evidence(openai_server):
    prompt = prompt_for()
    pieces = list(openai_generator(openai_server.url, api_key="sk-test", max_tokens=64).stream(prompt))
    assert pieces == openai_server.reply
    (request,) = openai_server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    body = request["body"]
    assert body["model"] == "qwen2.5-coder-7b" and body["stream"] is True and body["max_tokens"] == 64
    system, user = body["messages"]
    assert system == {"role": "system", "content": prompt.system} and user["role"] == "user"
    for n, c in enumerate(EVIDENCE, 1):
        assert (
            f"[{n}] sessions.py:{c.start_line}-{c.end_line}@0123456789ab ({c.symbol})\n```python\n" in user["content"]
        )
        assert c.snippet in user["content"]
    assert QUESTION in user["content"]


def test_openai_base_url_may_omit_v1_and_a_whole_reply_is_read_too(openai_server):
    openai_server.mode = "whole"
    base = openai_server.url.removesuffix("/v1")
    assert openai_generator(base).generate(prompt_for()) == "".join(openai_server.reply)
    assert openai_server.requests[0]["path"] == "/v1/chat/completions"
    assert "Authorization" not in openai_server.requests[0]["headers"], "no key, no header"


def test_openai_server_down_is_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(GeneratorUnavailable, match=rf"cannot connect to .*127.0.0.1:{port}.*GROUNDING_OPENAI_BASE_URL"):
        openai_generator(url).generate(prompt_for())


@pytest.mark.parametrize(
    "mode, message",
    [
        ("http-error", r"answered HTTP 404: .*model 'nope' does not exist.*\(model 'qwen2.5-coder-7b'\)"),
        ("garbage", r"sent a chunk that is not JSON: '\{not json'"),
        ("error-event", r"reported an error: CUDA out of memory"),
    ],
)
def test_openai_bad_replies_are_clear_errors(openai_server, mode, message):
    openai_server.mode = mode
    with pytest.raises(GeneratorUnavailable, match=message):
        openai_generator(openai_server.url).generate(prompt_for())


def test_openai_times_out(openai_server):
    openai_server.mode = "slow"
    started = time.perf_counter()
    with pytest.raises(GeneratorUnavailable, match=r"did not answer within 0.5s"):
        openai_generator(openai_server.url, timeout=0.5).generate(prompt_for())
    assert time.perf_counter() - started < 2.5


def test_load_generator_reads_the_openai_settings(openai_server, monkeypatch):
    monkeypatch.setenv("GROUNDING_GENERATOR", "openai")
    monkeypatch.setenv("GROUNDING_OPENAI_BASE_URL", openai_server.url)
    monkeypatch.setenv("GROUNDING_OPENAI_MODEL", "served-model")
    monkeypatch.setenv("GROUNDING_ANSWER_TOKENS", "77")
    reset_settings()
    assert load_generator().generate(prompt_for()) == "".join(openai_server.reply)
    body = openai_server.requests[0]["body"]
    assert body["model"] == "served-model" and body["max_tokens"] == 77


# --- retro ---------------------------------------------------------------------------------------------


def test_retro_presents_the_completion_with_the_neighbours_it_read():
    neighbours = (EVIDENCE[1], EVIDENCE[2])
    lines = completion_lines("requests", "x = 1\ndef send(self, ", "request, **kwargs):", neighbours, language="python")
    text = "\n".join(lines)
    assert "```python\ndef send(self, request, **kwargs):\n```" in text
    assert f"`sessions.py:{EVIDENCE[1].start_line}-{EVIDENCE[1].end_line}` [1]" in text
    assert cited_numbers(text) == [1, 2]


def test_retro_as_the_default_leaves_questions_to_the_fallback():
    generator = RetroGenerator(always=False, fallback=ExtractiveGenerator())
    pieces = list(generator.stream_cited(prompt_for()))
    assert pieces[0] == tuple(EVIDENCE), "the fallback's citations: the prompt's evidence"
    assert "".join(pieces[1:]) == ExtractiveGenerator().generate(prompt_for())
