"""Evaluation: question files, metrics, the split, the docstring harvester and `grounding eval` end to end."""

from __future__ import annotations

import ast
import difflib
import json
import re
import shutil
import textwrap

import pytest
import sqlalchemy as sa

from grounding import store
from grounding.cli import main
from grounding.config import get_settings, reset_settings
from grounding.evaluation.datasets import Question, load_questions, save_questions, select_split, split_of
from grounding.evaluation.eval_index import eval_dir
from grounding.evaluation.harvest import first_sentence, functions, harvest_docstrings
from grounding.evaluation.metrics import DatasetError, eval_runs, first_correct, retrieval_metrics
from grounding.index.ingest import ingest
from grounding.index.reindex import reindex
from grounding.records import Citation
from tests.conftest import copy_tree, git_repo


def read_tree(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- question files ----------------------------------------------------------------------------


def test_jsonl_round_trip(tmp_path):
    questions = [
        Question("where are invoices rounded?", "billing/invoice.py", 10, 24, "train", symbol="Invoice.round"),
        Question("überprüfe die Steuer", "billing/tax.py", 3, 3, "heldout"),
        Question("how is a refund issued", "refunds.py", 1, 40),  # no split: a user's file may leave it out
    ]
    path = save_questions(tmp_path / "deep" / "q.jsonl", questions)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and json.loads(lines[2]) == {
        "question": "how is a refund issued",
        "path": "refunds.py",
        "start_line": 1,
        "end_line": 40,
    }
    assert load_questions(path) == questions
    path.write_text("\n" + path.read_text(encoding="utf-8") + "\n\n", encoding="utf-8")
    assert load_questions(path) == questions, "blank lines are skipped"


@pytest.mark.parametrize(
    "bad, why",
    [
        ('{"question": "q", "path": "a.py", "start_line": 1', "Expecting"),
        ('{"question": "q", "path": "a.py", "start_line": 1}', "missing end_line"),
        ('{"question": "q", "path": "a.py", "start_line": 9, "end_line": 3}', "1 <= start_line <= end_line"),
        ('{"question": "q", "path": "a.py", "start_line": "1", "end_line": 3}', "must be integers"),
        ('{"question": "q", "path": "a.py", "start_line": 1, "end_line": 3, "split": "test"}', "split must be"),
        ('{"question": "", "path": "a.py", "start_line": 1, "end_line": 3}', "non-empty string"),
        ('["q", "a.py", 1, 3]', "JSON object"),
    ],
)
def test_malformed_line_is_named_by_its_number(tmp_path, bad, why):
    good = '{"question": "q", "path": "a.py", "start_line": 1, "end_line": 3}'
    path = tmp_path / "q.jsonl"
    path.write_text(f"{good}\n\n{bad}\n{good}\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"q\.jsonl:3: .*{re.escape(why)}"):
        load_questions(path)


def test_missing_question_file_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_questions(tmp_path / "nope.jsonl")


# --- metrics -------------------------------------------------------------------------------------


def cite(path: str, start: int, end: int) -> Citation:
    return Citation(repo="r", path=path, start_line=start, end_line=end, commit=None, score=0.0, snippet="")


def test_first_correct_wants_same_file_and_overlapping_lines():
    q = Question("q", "a.py", 10, 20)
    wrong_file, above, touching = cite("b.py", 10, 20), cite("a.py", 1, 9), cite("a.py", 20, 30)
    assert first_correct([wrong_file, above, cite("a.py", 21, 25), touching], q) == 4
    assert first_correct([cite("a.py", 1, 100)], q) == 1, "a chunk that encloses the span answers it"
    assert first_correct([wrong_file, above], q) is None
    assert first_correct([], q) is None


def test_metrics_on_a_hand_made_case():
    ranks = [1, 3, None, 2, 10, 6]
    metrics = retrieval_metrics(ranks)
    assert metrics["recall@1"] == pytest.approx(1 / 6)
    assert metrics["recall@5"] == pytest.approx(3 / 6)  # ranks 1, 3, 2
    assert metrics["recall@10"] == pytest.approx(5 / 6)
    # MRR = (1/1 + 1/3 + 0 + 1/2 + 1/10 + 1/6) / 6 = 2.1 / 6
    assert metrics["mrr@10"] == pytest.approx(0.35)
    assert set(metrics) == {"recall@1", "recall@5", "recall@10", "mrr@10"}
    assert retrieval_metrics([6, None], k=5) == {"recall@1": 0.0, "recall@5": 0.0, "mrr@5": 0.0}
    with pytest.raises(ValueError):
        retrieval_metrics([])


# --- the split ----------------------------------------------------------------------------------


def test_split_is_deterministic_and_by_file():
    # Fixed values: a changed hash would silently move files between train and held-out.
    assert split_of("click/core.py") == "heldout" and split_of("requests/models.py") == "train"
    assert split_of("docstring_parser/google.py") == "heldout" and split_of("a.py") == "train"
    paths = [f"pkg{i // 10}/module_{i}.py" for i in range(3000)]
    heldout = sum(split_of(p) == "heldout" for p in paths) / len(paths)
    assert 0.17 < heldout < 0.23, heldout
    questions = [Question(f"q{i}", p, 1, 2) for i, p in enumerate(paths[:200] * 2)]
    chosen = select_split(questions, "heldout")
    assert {q.path for q in chosen} == {p for p in paths[:200] if split_of(p) == "heldout"}
    assert len(chosen) + len(select_split(questions, "train")) == len(select_split(questions, "all")) == 400
    assert select_split([Question("q", "a.py", 1, 2, "heldout")], "heldout"), "a file's own split wins"


# --- the docstring harvester ---------------------------------------------------------------------


def test_docstring_harvest_on_click(tmp_path):
    root = copy_tree("click", tmp_path / "click")
    files = read_tree(root)
    questions, rewritten = harvest_docstrings(files)
    assert len(questions) > 150 and set(rewritten) == set(files)
    by_path: dict[str, list[Question]] = {}
    for q in questions:
        by_path.setdefault(q.path, []).append(q)
        assert q.split == split_of(q.path)

    for path, data in files.items():
        new = rewritten[path]
        if path not in by_path:
            assert new == data, f"{path}: a file without harvested questions is untouched"
            continue
        # The gold span is exactly one function of the rewritten file, and its docstring is gone.
        spans = {
            (min([n.lineno] + [d.lineno for d in n.decorator_list]), n.end_lineno): (symbol, n)
            for symbol, n in functions(ast.parse(new))
        }
        for q in by_path[path]:
            symbol, node = spans[(q.start_line, q.end_line)]
            assert symbol == q.symbol
            first = node.body[0]
            docstring = isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str)
            assert not docstring, f"{path}:{symbol}"
        # Everything else is byte-identical: each change removes one docstring (or turns it into `pass`).
        old_lines, new_lines = data.splitlines(keepends=True), new.splitlines(keepends=True)
        summaries = sorted(q.question for q in by_path[path])
        removed = []
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False).get_opcodes():
            if op == "equal":
                continue
            assert op in ("delete", "replace"), f"{path}: {op} {old_lines[i1:i2]} -> {new_lines[j1:j2]}"
            if op == "replace":
                assert len(new_lines[j1:j2]) == 1 and new_lines[j1].strip() == b"pass", new_lines[j1:j2]
            (statement,) = ast.parse(textwrap.dedent(b"".join(old_lines[i1:i2]).decode())).body
            removed.append(first_sentence(statement.value.value))
        assert sorted(removed) == summaries, path


def test_harvest_skips_what_does_not_parse_and_keeps_other_files():
    files = {
        "py2.py": b"print 'hello'\n",
        "notes.md": b"# Notes\n",
        "ok.py": b'@decorated\ndef f(x):\n    """Return the value of x doubled."""\n\n\n',
    }
    questions, rewritten = harvest_docstrings(files)
    assert questions == [Question("Return the value of x doubled.", "ok.py", 1, 3, split_of("ok.py"), "f")]
    assert rewritten == {**files, "ok.py": b"@decorated\ndef f(x):\n    pass\n\n\n"}


# --- grounding eval end to end ----------------------------------------------------------------------


def chunk_texts(engine, name: str) -> str:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT c.text FROM chunks c JOIN files f ON f.id = c.file_id JOIN repositories r ON r.id = f.repo_id "
                "WHERE r.name = :n AND f.snapshot_id <= r.current_snapshot_id"
            ),
            {"n": name},
        ).scalars()
        return "\n".join(rows)


def table(out: str) -> dict[str, list[float]]:
    """The printed metric rows, by mode."""
    rows = re.findall(r"^(hybrid|vector|lexical) +((?:[0-9.]+ +){4})(\d+)$", out, re.M)
    return {mode: [float(x) for x in figures.split()] for mode, figures, _ in rows}


def test_grounding_eval_harvests_indexes_evaluates_and_stores(engine, repo_name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GROUNDING_ENCODER", "hashing-64")
    reset_settings()
    src = copy_tree("docstring_parser", tmp_path / "docstring_parser")
    assert main(["ingest", str(src), "--name", repo_name, "-q"]) == 0
    capsys.readouterr()
    # A later default encoder does not matter: the eval index follows the repository's active version.
    monkeypatch.setenv("GROUNDING_ENCODER", "hashing-32")
    reset_settings()

    assert main(["eval", repo_name, "--harvest", "docstrings"]) == 0
    out = capsys.readouterr().out
    derived = f"{repo_name}~eval-docstrings"
    saved = eval_dir(repo_name) / "docstrings.jsonl"
    questions = load_questions(saved)
    heldout = select_split(questions, "heldout")
    assert len(questions) >= 30 and 5 <= len(heldout) < len(questions)
    assert f"{len(heldout)} questions (heldout split of {len(questions)}) asked of {derived}" in out
    assert "(hashing-64)" in out
    printed = table(out)
    assert list(printed) == ["hybrid"] and all(0 <= x <= 1 for x in printed["hybrid"])
    assert printed["hybrid"][2] > 0, f"some held-out function is found in the top 10:\n{out}"

    # The eval index holds the functions without the docstrings that ask for them; the repository keeps them.
    original, stripped = chunk_texts(engine, repo_name), chunk_texts(engine, derived)
    one_line = [q.question for q in questions if q.question in original]
    assert len(one_line) >= 10
    assert [s for s in one_line if s in stripped] == []

    (run,) = eval_runs(repo_name)
    assert (run.dataset, run.split, run.mode, run.questions) == ("docstrings", "heldout", "hybrid", len(heldout))
    assert [round(run.metrics[m], 3) for m in ("recall@1", "recall@5", "recall@10", "mrr@10")] == printed["hybrid"]
    with engine.connect() as conn:
        version = store.active_index_version(conn, store.repo_id(conn, derived))
    assert (run.index_version, run.encoder, version.encoder, version.dim) == (
        version.id,
        "hashing-64",
        "hashing-64",
        64,
    )

    # A rerun is incremental, and --mode all stores one run per mode.
    assert main(["eval", repo_name, "--mode", "all", "--split", "all"]) == 0
    out = capsys.readouterr().out
    assert "0 files changed, 0 embedded" in out
    assert list(table(out)) == ["hybrid", "vector", "lexical"]
    runs = eval_runs(repo_name)
    assert [(r.mode, r.split, r.questions) for r in runs[:3]] == [
        ("lexical", "all", len(questions)),
        ("vector", "all", len(questions)),
        ("hybrid", "all", len(questions)),
    ]
    assert len(runs) == 4

    # Reindexed with another encoder, the repository's eval index follows it.
    reindex(repo_name, encoder="hashing-32", grace_seconds=0)
    assert main(["eval", repo_name, "--mode", "vector"]) == 0
    assert "(hashing-32)" in capsys.readouterr().out
    assert eval_runs(repo_name, limit=1)[0].encoder == "hashing-32"


def test_a_git_url_repository_is_evaluated_from_its_checkout(engine, repo_name, hashing, tmp_path, capsys):
    origin = git_repo(copy_tree("docstring_parser", tmp_path / "origin"))
    ingest(f"file://{origin}", name=repo_name, embedder=hashing)
    shutil.rmtree(origin)  # evaluating reads the checkout the ingest left: it does not fetch
    assert main(["eval", repo_name, "--split", "all", "--mode", "lexical"]) == 0
    out = capsys.readouterr().out
    assert "questions (all split of" in out and table(out)["lexical"][2] > 0, out


def test_an_eval_index_registered_from_an_older_tree_place_is_rebuilt_from_the_new_one(
    engine, repo_name, hashing, tmp_path
):
    """Eval trees moved to a directory named by a hash of the repository's name: an eval index ingested from
    the old place is read from the new one, not refused as a source conflict."""
    from grounding.evaluation.eval_index import build_eval_index

    src = copy_tree("docstring_parser", tmp_path / "docstring_parser")
    ingest(str(src), name=repo_name, embedder=hashing)
    old_place = copy_tree("docstring_parser", tmp_path / "eval" / repo_name / "docstrings-tree")
    ingest(str(old_place), name=f"{repo_name}~eval-docstrings", embedder=hashing, derived_from=repo_name)
    index = build_eval_index(repo_name)
    with engine.connect() as conn:
        source, _, _ = store.repo_source(conn, index.name)
    assert source == str(eval_dir(repo_name) / "docstrings-tree") and index.questions


def test_grounding_eval_on_a_question_file(engine, repo_name, hashing, tmp_path, capsys):
    src = copy_tree("docstring_parser", tmp_path / "docstring_parser")
    ingest(str(src), name=repo_name, embedder=hashing)
    lines = (src / "common.py").read_text().splitlines()
    start = next(i for i, line in enumerate(lines, 1) if line.startswith("class DocstringParam"))
    dataset = save_questions(
        tmp_path / "mine.jsonl",
        [
            Question("DocstringParam", "common.py", start, start + 5),
            Question("a question about nothing at all", "missing.py", 1, 1),
        ],
    )
    assert main(["eval", repo_name, "--dataset", str(dataset), "--mode", "lexical"]) == 0
    out = capsys.readouterr().out
    assert f"2 questions (all split of 2) asked of {repo_name}," in out
    assert table(out)["lexical"] == [0.5, 0.5, 0.5, 0.5], out
    (run,) = eval_runs(repo_name)
    assert (run.dataset, run.split, run.questions, run.metrics["mrr@10"]) == (str(dataset), "all", 2, 0.5)
    with engine.connect() as conn:
        assert f"{repo_name}~eval-docstrings" not in store.repo_names(conn), "a question file needs no eval index"


def test_grounding_eval_errors(engine, repo_name, hashing, tmp_path, capsys):
    assert main(["eval", "no-such-repo"]) == 1
    assert "repository 'no-such-repo' is not ingested; run `grounding ingest" in capsys.readouterr().err
    assert not (get_settings().home / "eval").exists(), "nothing is harvested for an unknown repository"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    assert main(["eval", "no-such-repo", "--dataset", str(bad)]) == 1
    assert "not ingested" in capsys.readouterr().err
    root = tmp_path / "plain"
    root.mkdir()
    (root / "a.py").write_text("def f():\n    return 1\n")
    ingest(str(root), name=repo_name, embedder=hashing)
    assert main(["eval", repo_name, "--dataset", str(bad)]) == 1
    assert "bad.jsonl:1: missing path, start_line, end_line" in capsys.readouterr().err
    assert main(["eval", repo_name]) == 1
    assert "no question to harvest" in capsys.readouterr().err
