"""Harvest evaluation questions from a repository's own code (pure: file bytes in, questions and bytes out).

The docstring harvester is the CodeSearchNet construction: the first sentence of a function's
docstring asks for the function. The docstring is then cut out of the file, byte-exactly and
nothing else, so the retriever must find the function by its code; the gold span is read back from
the rewritten file.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from grounding.evaluation.datasets import Question, split_of

MIN_QUESTION_WORDS = 4  # "Return the value." asks for too little to have one right answer
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")

Function = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class DocumentedFunction:
    """A function whose docstring can be cut whole, and the question its first sentence asks."""

    path: str
    index: int  # position among the file's functions in source order (nested ones too)
    symbol: str  # qualified name: enclosing classes and functions, dotted
    summary: str  # the docstring's first sentence: the question


def functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, Function]]:
    """(qualified name, node) of every function and method of a module, nested ones too, in source order."""
    for node in ast.iter_child_nodes(tree):
        name = prefix
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}.{node.name}" if prefix else node.name
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield name, node
        yield from functions(node, name)


def first_sentence(docstring: str) -> str:
    """The first sentence of a docstring's first paragraph, whitespace collapsed."""
    paragraph = " ".join(inspect.cleandoc(docstring).split("\n\n")[0].split())
    return _SENTENCE_END.split(paragraph, maxsplit=1)[0]


def removable_docstring(node: Function, lines: Sequence[bytes]) -> ast.Expr | None:
    """The function's docstring statement, if it stands on lines of its own (so it can be cut whole)."""
    doc = node.body[0]
    if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
        return None
    alone_before = not lines[doc.lineno - 1][: doc.col_offset].strip()
    alone_after = not lines[doc.end_lineno - 1][doc.end_col_offset :].strip()
    next_line = node.body[1].lineno if len(node.body) > 1 else None
    return doc if alone_before and alone_after and next_line != doc.end_lineno else None


def _parse(data: bytes) -> ast.Module | None:
    try:
        return ast.parse(data)
    except (SyntaxError, ValueError):  # Python 2 files, templates, NUL bytes: nothing to harvest
        return None


def documented_functions(
    files: Mapping[str, bytes], *, min_words: int = MIN_QUESTION_WORDS
) -> list[DocumentedFunction]:
    """Every Python function, in the order of `files`, whose docstring's first sentence makes a question."""
    found = []
    for path, data in files.items():
        tree = _parse(data) if path.endswith(".py") else None
        if tree is None:
            continue
        lines = data.splitlines(keepends=True)
        for index, (symbol, node) in enumerate(functions(tree)):
            doc = removable_docstring(node, lines)
            if doc is not None:
                summary = first_sentence(doc.value.value)
                if len(summary.split()) >= min_words:
                    found.append(DocumentedFunction(path, index, symbol, summary))
    return found


def strip_docstrings(
    files: Mapping[str, bytes], picked: Sequence[DocumentedFunction]
) -> tuple[list[Question], dict[str, bytes]]:
    """Cut the picked functions' docstrings out of their files; the questions carry the rewritten gold spans.

    Returns the questions (sorted by path and line) and every file of `files`, the rewritten ones
    replaced. Only the docstring's own lines go; a function left without a body gets `pass`.
    """
    by_path: dict[str, dict[int, DocumentedFunction]] = {}
    for fn in picked:
        by_path.setdefault(fn.path, {})[fn.index] = fn
    rewritten = dict(files)
    questions = []
    for path, wanted in by_path.items():
        lines = files[path].splitlines(keepends=True)
        nodes = [node for _, node in functions(ast.parse(files[path]))]
        for index in sorted(wanted, key=lambda i: -nodes[i].body[0].lineno):  # bottom up: line numbers hold
            node, doc = nodes[index], nodes[index].body[0]
            indent = lines[doc.lineno - 1][: doc.col_offset]
            body = [] if len(node.body) > 1 else [indent + b"pass\n"]
            lines[doc.lineno - 1 : doc.end_lineno] = body
        data = b"".join(lines)
        rewritten[path] = data
        after = [node for _, node in functions(ast.parse(data))]
        for index, fn in wanted.items():
            node = after[index]
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            questions.append(Question(fn.summary, path, start, node.end_lineno, split_of(path), symbol=fn.symbol))
    return sorted(questions, key=lambda q: (q.path, q.start_line)), rewritten


def harvest_docstrings(
    files: Mapping[str, bytes], *, min_words: int = MIN_QUESTION_WORDS
) -> tuple[list[Question], dict[str, bytes]]:
    """Questions from every documented Python function, and the files with those docstrings cut out."""
    return strip_docstrings(files, documented_functions(files, min_words=min_words))
