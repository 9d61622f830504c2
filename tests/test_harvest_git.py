"""The commits harvester: kept and dropped commits and files, the tree at BASE, `grounding eval --harvest commits`."""

from __future__ import annotations

import subprocess

import pytest

from grounding.cli import main
from grounding.errors import DatasetError
from grounding.evaluation.datasets import load_questions, split_of
from grounding.evaluation.eval_index import eval_dir, run_eval
from grounding.evaluation.harvest_git import harvest_commits, is_test_path, question_of
from grounding.evaluation.metrics import eval_runs
from grounding.index.ingest import ingest
from tests.conftest import copy_tree, git, git_repo

# --- pure rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, is_test",
    [
        ("tests/test_core.py", True),
        ("pkg/tests/helpers.py", True),
        ("test/util.go", True),
        ("web/__tests__/app.js", True),
        ("src/test_utils.py", True),
        ("src/conftest.py", True),
        ("src/parser_test.py", True),
        ("server/handler_test.go", True),
        ("web/app.test.js", True),
        ("web/app.spec.ts", True),
        ("lib/user_spec.rb", True),
        ("src/main/java/FooTest.java", True),
        ("src/FooTests.cs", True),
        ("src/click/testing.py", False),  # a library module for users' tests, not a test
        ("src/contest.py", False),
        ("src/Contest.java", False),
        ("src/latest.py", False),
        ("src/attestation/verify.py", False),
    ],
)
def test_is_test_path(path, is_test):
    assert is_test_path(path) is is_test


@pytest.mark.parametrize(
    "subject, question",
    [
        ("Make the progress bar respect the terminal width", "Make the progress bar respect the terminal width"),
        (
            "Make the progress bar respect the terminal width (#2817)",
            "Make the progress bar respect the terminal width",
        ),
        ("Fix   the  prompt default   handling", "Fix the prompt default handling"),
        ("Merge the two option parsers into one", "Merge the two option parsers into one"),
        ("Release the lock before closing the file", "Release the lock before closing the file"),
        ("Fix typo", None),
        ("Fix a typo (#12)", None),  # three words once the reference is cut
        ("Merge branch 'main' into feature", None),
        ("Merge pull request #12 from someone/branch", None),
        ('Revert "Make the progress bar respect the terminal width"', None),
        ("Bump version to 8.1.8 for release", None),
        ("bump the version for the next cycle", None),
        ("Release version 8.1.3 to PyPI", None),
        ("Prepare the 2.0 release notes now", None),
        ("Update changelog for the next release", None),
        ("fixup! Make the progress bar respect it", None),
        ("[pre-commit.ci] auto fixes from pre-commit.com hooks", None),
    ],
)
def test_question_of(subject, question):
    assert question_of(subject) == question


# --- a real history ------------------------------------------------------------------------------


def commit(root, subject: str, *, append=(), add=None, delete=()) -> str:
    """Append a line to each of `append`, write the files of `add`, delete `delete`; commit; the new sha."""
    for path in append:
        with open(root / path, "a", encoding="utf-8") as f:
            f.write(f"\n# {subject}\n")
    for path, text in (add or {}).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    for path in delete:
        (root / path).unlink()
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", subject)
    return git(root, "rev-parse", "HEAD")


def show(root, commit: str, path: str) -> bytes:
    return subprocess.run(["git", "show", f"{commit}:{path}"], cwd=root, check=True, capture_output=True).stdout


C = "src/click"


@pytest.fixture
def history(tmp_path):
    """A click checkout with a history of kept and dropped commits; the shas by name."""
    root = tmp_path / "proj"
    copy_tree("click", root / C)
    (root / "tests").mkdir()
    (root / "tests/test_termui.py").write_text("def test_prompt():\n    assert True\n")
    (root / "README.md").write_text("# click\n\nCompose command line interfaces.\n")
    (root / "CHANGES.rst").write_text("Changes\n=======\n")
    (root / C / "static").mkdir()
    (root / C / "static/app.min.js").write_text("var a=" + "1," * 2000 + "2;\n")
    git(root, "init", "-q", "-b", "main")
    sha = {"import": commit(root, "Import the click sources and their tests")}  # adds only: no gold
    sha["utils"] = commit(root, "Teach format_filename to shorten long paths", append=[f"{C}/utils.py"])
    commit(root, "Fix typo", append=[f"{C}/core.py"])
    commit(root, "Bump version to 8.1.8 for release", append=[f"{C}/__init__.py"])
    commit(root, 'Revert "Fix typo in the core module"', append=[f"{C}/core.py"])
    commit(root, "Cover the prompt confirmation in tests", append=["tests/test_termui.py"])
    sha["prompt"] = commit(
        root, "Handle the empty default in the prompt function", append=[f"{C}/termui.py", "tests/test_termui.py"]
    )
    commit(root, "Document the new shell completion behaviour", append=["README.md", "CHANGES.rst"])
    wide = [f"{C}/{name}.py" for name in ("utils", "termui", "core", "formatting")]
    commit(root, "Rename the internal echo helpers everywhere", append=wide)
    commit(root, "Add a module of rich formatting helpers", add={f"{C}/rich.py": "def bold(text):\n    return text\n"})
    commit(root, "Extend the rich formatting helpers with colours", append=[f"{C}/rich.py"])  # not at BASE
    sha["invoke"] = commit(
        root, "Pass the context through invoke and the option parser", append=[f"{C}/core.py", f"{C}/parser.py"]
    )
    sha["types"] = commit(
        root,
        "Split the exception classes out of the types module",
        append=[f"{C}/types.py"],
        add={f"{C}/errors.py": "class Oops(Exception):\n    pass\n"},
    )
    sha["globals"] = commit(root, "Remove the obsolete globals module entirely", delete=[f"{C}/globals.py"])
    commit(root, "Rebuild the minified bundle from its sources", add={f"{C}/static/app.min.js": "var b=1;" * 500})
    git(root, "checkout", "-q", "-b", "side")
    commit(root, "Tweak the decorators on a side branch only", append=[f"{C}/decorators.py"])
    git(root, "checkout", "-q", "main")
    git(root, "merge", "-q", "--no-ff", "-m", "Merge branch 'side' into the main line", "side")
    sha["width"] = commit(root, "Make the progress bar respect the terminal width (#2817)", append=[f"{C}/termui.py"])
    return root, sha


EXPECTED = [  # newest first
    ("Make the progress bar respect the terminal width", (f"{C}/termui.py",)),
    ("Remove the obsolete globals module entirely", (f"{C}/globals.py",)),
    ("Split the exception classes out of the types module", (f"{C}/types.py",)),
    ("Pass the context through invoke and the option parser", (f"{C}/core.py", f"{C}/parser.py")),
    ("Handle the empty default in the prompt function", (f"{C}/termui.py",)),
    ("Teach format_filename to shorten long paths", (f"{C}/utils.py",)),
]


def test_commits_and_files_kept_and_dropped(history):
    root, sha = history
    harvest = harvest_commits(root)
    assert harvest.walked == 16, "first-parent, non-merge: the merge and the side branch's commit are not walked"
    assert [(c.question, c.paths) for c in harvest.commits] == EXPECTED
    assert [c.sha for c in harvest.commits] == [
        sha[k] for k in ("width", "globals", "types", "invoke", "prompt", "utils")
    ]
    assert harvest.base == sha["import"], "BASE is the parent of the oldest kept commit"
    assert [(q.question, q.path) for q in harvest.questions] == [(s, p) for s, paths in EXPECTED for p in paths]


def test_questions_ask_of_the_tree_at_base(history):
    root, sha = history
    harvest = harvest_commits(root)
    tracked = git(root, "ls-tree", "-r", "--name-only", sha["import"]).splitlines()
    assert set(harvest.files) == set(tracked) and f"{C}/rich.py" not in harvest.files
    assert all(harvest.files[path] == show(root, sha["import"], path) for path in tracked)
    # Bytes at BASE, not at HEAD: the line each later commit appended is not there.
    assert b"shorten long paths" not in harvest.files[f"{C}/utils.py"]
    assert b"shorten long paths" in (root / C / "utils.py").read_bytes()
    assert f"{C}/globals.py" in harvest.files, "deleted at HEAD, present at BASE"
    for q in harvest.questions:
        lines = len(show(root, sha["import"], q.path).decode().splitlines())
        assert (q.start_line, q.end_line) == (1, lines), q
        assert (q.split, q.symbol) == (split_of(q.path), None)
    assert len({q.split for q in harvest.questions if q.path == f"{C}/termui.py"}) == 1


def test_base_moves_with_the_window_and_a_subdirectory_is_its_own_root(history):
    root, sha = history
    # The last four commits: width, minified bundle (generated at BASE: dropped), globals, types.
    harvest = harvest_commits(root, max_commits=4, min_commits=1)
    assert harvest.walked == 4 and harvest.base == git(root, "rev-parse", f"{sha['types']}^")
    assert [c.question for c in harvest.commits] == [s for s, _ in EXPECTED[:3]]
    assert f"{C}/rich.py" in harvest.files, "the tree is the one at the new BASE"
    with pytest.raises(DatasetError, match=r"only 3 of the last 4 commits .*\(at least 5 needed\)"):
        harvest_commits(root, max_commits=4)

    sub = harvest_commits(root / "src")
    assert sub.walked == 14, "commits that touch only tests/ or the top-level docs are outside src/"
    assert [(c.question, c.paths) for c in sub.commits] == [
        (s, tuple(p.removeprefix("src/") for p in paths)) for s, paths in EXPECTED
    ]
    assert all(path.startswith("click/") for path in sub.files)


def test_not_a_history_is_a_dataset_error(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.py").write_text("def f():\n    return 1\n")
    with pytest.raises(DatasetError, match="not a git checkout"):
        harvest_commits(plain)
    git_repo(plain)
    with pytest.raises(DatasetError, match="only 0 of the last 1 commits"):
        harvest_commits(plain)


# --- grounding eval --harvest commits end to end ---------------------------------------------------


def test_grounding_eval_harvests_commits(engine, repo_name, hashing, history, capsys):
    root, sha = history
    ingest(str(root), name=repo_name, embedder=hashing)
    capsys.readouterr()
    assert main(["eval", repo_name, "--harvest", "commits", "--split", "all", "--mode", "lexical"]) == 0
    out = capsys.readouterr().out
    derived = f"{repo_name}~eval-commits"
    assert f"{repo_name}: 7 questions harvested (commits)" in out
    assert f"7 questions (all split of 7) asked of {derived}" in out and "(hashing-64)" in out

    harvest = harvest_commits(root)
    saved = eval_dir(repo_name) / "commits.jsonl"
    assert load_questions(saved) == list(harvest.questions)
    tree = eval_dir(repo_name) / "commits-tree"
    assert {p.relative_to(tree).as_posix(): p.read_bytes() for p in tree.rglob("*") if p.is_file()} == harvest.files

    (run,) = eval_runs(repo_name)
    assert (run.dataset, run.split, run.mode, run.questions) == ("commits", "all", "lexical", 7)
    assert run.metrics["recall@10"] > 0, f"some changed file is found in the top 10:\n{out}"

    # Python callers get the same, asked of the derived repository; a rerun embeds nothing new.
    report = run_eval(repo_name, harvester="commits", split="all", modes=("lexical",))
    assert (report.searched, report.total, report.eval_index.ingest.embeddings_computed) == (derived, 7, 0)


def test_commits_harvest_of_a_source_without_history(engine, repo_name, hashing, tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.py").write_text("def f():\n    return 1\n")
    ingest(str(plain), name=repo_name, embedder=hashing)
    with pytest.raises(DatasetError, match="is not a git checkout with commits"):
        run_eval(repo_name, harvester="commits")
    assert main(["eval", repo_name, "--harvest", "commits"]) == 1
    assert "use --harvest docstrings or bring a question file with --dataset" in capsys.readouterr().err


def test_a_git_url_repository_harvests_the_checkout_the_ingest_left(engine, repo_name, hashing, history):
    root, sha = history
    ingest(f"file://{root}", name=repo_name, embedder=hashing)
    commit(root, "Make a change the ingest never fetched", append=[f"{C}/termui.py"])
    report = run_eval(repo_name, harvester="commits", split="all", modes=("lexical",))
    assert (report.searched, report.total) == (f"{repo_name}~eval-commits", 7)
    assert [q.question for q in report.eval_index.questions][0] == EXPECTED[0][0], "the ingested commit, not a fetch"
