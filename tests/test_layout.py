"""The package's shape (README "Layout"): one folder per stage, imports pointing down only, no import circle.

Walks grounding/ with `ast` (every import, the ones inside functions and under TYPE_CHECKING too, since a
lazy import still ties the stages together) and fails on an import of a higher stage or on a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "grounding"

# The stages, lowest first. A module may import its own stage and the ones before it, never a later one.
STAGES = (
    "core",  # config, errors, records, db, schema, validation, and the pure analysis records and store need
    "store",  # the only SQL
    "access",  # who may read which repository (access), and who is calling (tokens); through store
    "index",  # sources, languages, secrets, chunking, embed (the encoders), ingest, reindex, refresh, retro_db
    "search",  # filters, fusion, retrieve, rerank
    "models",  # nn.Modules and their configs: answer runs RETRO, training trains them all
    "answer",  # ask, prompt, generate/, completion
    "evaluation",  # above what it measures
    "training",  # above what it trains and the evaluation it is gated by
    "service",  # serve, status
    "cli",  # the command, and grounding/__init__.py: the public API imports every stage
)
RANK = {stage: rank for rank, stage in enumerate(STAGES)}
CORE = {"config", "errors", "records", "db", "schema", "validation", "lexical", "roles"}
FOLDERS = {"store", "index", "search", "models", "answer", "evaluation", "training", "service", "cli"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "cli"  # grounding/__init__.py
    head = parts[1]
    if head in FOLDERS:
        return head
    if head in ("access", "tokens"):
        return "access"
    if head in CORE:
        return "core"
    raise AssertionError(f"{module} is in no stage: give it a folder, or add it to the core in tests/test_layout.py")


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(module: str, path: Path, known: set[str]) -> set[tuple[str, int]]:
    """(imported grounding module, line) for every import in the file, resolved to a module that exists."""

    def resolve(name: str) -> str:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    found = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(resolve(a.name), node.lineno) for a in node.names if a.name.split(".")[0] == "grounding"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "grounding":
                continue
            for alias in node.names:  # `from grounding.index import ingest` imports the module grounding.index.ingest
                sub = f"{target}.{alias.name}"
                found.add((sub if sub in known else resolve(target), node.lineno))
    return {(m, line) for m, line in found if m != module}


def graph() -> dict[str, set[tuple[str, int]]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def upward_imports(edges: dict[str, set[tuple[str, int]]]) -> list[str]:
    bad = []
    for module, targets in sorted(edges.items()):
        for target, line in sorted(targets):
            if RANK[stage_of(target)] > RANK[stage_of(module)]:
                bad.append(f"{module}:{line} imports {target} ({stage_of(module)} -> {stage_of(target)})")
    return bad


def circles(edges: dict[str, set[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a circle of imports."""
    succ = {m: sorted({t for t, _ in ts}) for m, ts in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(succ):
        if v not in index:
            visit(v)
    return found


def test_every_module_belongs_to_a_stage():
    for module in modules():
        assert stage_of(module) in RANK


def test_no_stage_imports_a_higher_one():
    bad = upward_imports(graph())
    assert not bad, "upward imports (a lower stage may not import a higher one):\n" + "\n".join(bad)


def test_no_import_circle():
    found = circles(graph())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_each_folder_says_what_it_holds():
    for folder in sorted(p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"):
        init = folder / "__init__.py"
        assert init.is_file(), f"{folder} is not a package"
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{init} has no module docstring"


@pytest.mark.parametrize(
    ("source", "line", "expect"),
    [
        ("grounding/index/ingest.py", "from grounding.search.retrieve import search", "upward"),
        ("grounding/records.py", "from grounding.index import sources", "upward"),
        ("grounding/search/retrieve.py", "from grounding.index.embed import load_embedder", None),
    ],
)
def test_the_walk_sees_an_upward_import(tmp_path, monkeypatch, source, line, expect):
    """The check itself: an upward import added to a copy of the package is reported, a downward one is not."""
    import shutil

    copy = tmp_path / "grounding"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / source.removeprefix("grounding/")
    target.write_text(target.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")
    monkeypatch.setitem(globals(), "PACKAGE", copy)
    bad = upward_imports(graph())
    if expect:
        assert any(b.startswith(module_name(target)) for b in bad), bad
    else:
        assert not bad, bad
