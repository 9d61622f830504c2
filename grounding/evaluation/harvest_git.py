"""Harvest evaluation questions from a repository's history: a commit's subject asks for the files it changed.

Each of the last MAX_COMMITS commits on the first-parent line (merges left out) whose subject reads
like a request ("Make the progress bar respect the terminal width") becomes a question; its gold
answer is the non-test source files that commit modified or deleted, any chunk of them counting.

The choices, each one made to keep the questions honest:

- Noise subjects are skipped: fewer than MIN_QUESTION_WORDS words, git's own merge subjects ("Merge
  branch ...", "Merge pull request ..."; "Merge the two parsers" is a real change), reverts,
  fixup!/squash!, version bumps and releases (they name a version), changelog updates. A trailing
  pull-request reference `(#123)` is cut before the words are counted.
- Gold files are source: a known language (grounding.index.languages) that is not prose, config or data
  (markdown, rst, text, toml, yaml, json, ini, xml), and not a test by its path (`is_test_path`). A
  file must have existed at the commit's parent: a file the commit adds is not there to be found.
- Commits with 1 to MAX_GOLD_FILES gold files are kept; a wider commit says too little about any one.
- One index cannot be built per commit, so every question is asked of one tree: the repository at
  BASE, the parent of the oldest commit the rules above keep. BASE predates every kept commit, so no
  answer leaks from the commits themselves; a commit whose gold files are not at BASE (added later)
  or would not be indexed there (too large, binary, generated) is dropped whole. The price: the
  further back a commit, the more its files have changed since BASE, hence the MAX_COMMITS window.
- One Question per (commit, gold file), its span the whole file at BASE, split by path
  (grounding.records.split_of) like every harvested question. The commit sha is kept in
  `GoldCommit`, not in the Question: the JSONL format has no field for it.

With `--first-parent --no-merges`, a repository that lands every change through a merge commit has
few commits left to ask about; squash-merged and rebased histories give the most.

Git is run here, narrowly and read-only (log, ls-tree, cat-file) against the object database: the
tree at BASE is read from git objects, never from the work tree, which stays where the user left it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from grounding.errors import DatasetError
from grounding.evaluation.datasets import Question, split_of
from grounding.evaluation.harvest import MIN_QUESTION_WORDS
from grounding.index.languages import detect_language
from grounding.index.sources import GIT_SAFE_CONFIG, classify, plain_segments
from grounding.records import SourceFile

MAX_COMMITS = 300  # how far back to walk: older commits are asked of an ever older tree
MAX_GOLD_FILES = 3
MIN_COMMITS = 5  # fewer kept commits than this is not a dataset worth a score
GIT_TIMEOUT_S = 300

NOT_SOURCE = frozenset({"text", "markdown", "rst", "toml", "yaml", "json", "ini", "xml"})
TEST_DIRS = frozenset({"test", "tests", "__tests__"})
_TEST_NAME = re.compile(r"^(?:test_.*|conftest\.py|.*[._](?:test|tests|spec)\.[^.]+)$")  # on the lower-cased name
_CAMEL_TEST = re.compile(r"[a-z0-9]Tests?\.[^.]+$")  # FooTest.java, FooTests.cs; not Contest.java
_NOISE = re.compile(
    r"^(?:merge (?:branch|pull request|remote-tracking branch|tag|commit)\b|revert\b|reapply\b|fixup!|squash!|amend!"
    r"|wip\b|\[pre-commit\.ci\]|pre-commit autoupdate|changelog\b|update (?:the )?(?:changelog|changes)\b)",
    re.IGNORECASE,
)
# A release or version bump names a version: "Release 8.1.3", "Bump version to 2.0", "Prepare the 1.4 release".
_RELEASE = re.compile(
    r"^(?:bump|release|releasing|prepare|preparing|version|tag)\b.*\d+\.\d+|\bbump(?:ed|ing)? (?:the )?version\b",
    re.IGNORECASE,
)
_PR_REF = re.compile(r"\s*\(#\d+(?:,\s*#\d+)*\)$")
_BLOB_MODES = ("100644", "100755")  # regular files; not symlinks (120000) or submodules (160000)


@dataclass(frozen=True)
class LoggedCommit:
    """One commit as `git log --name-status` lists it."""

    sha: str
    parent: str | None  # the first parent; None for a root commit
    subject: str
    changes: tuple[tuple[str, str], ...]  # (status letter A/M/D/T, path)


@dataclass(frozen=True)
class GoldCommit:
    """A kept commit: the question its subject asks and the source files that answer it."""

    sha: str
    parent: str
    question: str
    paths: tuple[str, ...]


@dataclass(frozen=True)
class CommitHarvest:
    """The questions of a repository's recent commits and the one tree they are asked of."""

    base: str  # the commit of `files`: parent of the oldest kept commit
    commits: tuple[GoldCommit, ...]  # newest first
    questions: tuple[Question, ...]  # one per (commit, gold file), in the order of `commits`
    files: dict[str, bytes]  # every tracked regular file at `base` up to max_bytes
    walked: int  # commits looked at


# --- pure --------------------------------------------------------------------------------------


def is_test_path(path: str) -> bool:
    """Whether a repository path is a test: under a test directory, or named like one."""
    p = PurePosixPath(path)
    if any(part in TEST_DIRS for part in p.parts[:-1]):
        return True
    return bool(_TEST_NAME.match(p.name.lower()) or _CAMEL_TEST.search(p.name))


def is_source_path(path: str) -> bool:
    """Whether a changed file can be gold: code in a known language, and not a test."""
    return detect_language(path) not in NOT_SOURCE and not is_test_path(path)


def question_of(subject: str, *, min_words: int = MIN_QUESTION_WORDS) -> str | None:
    """The question a commit subject asks, or None for noise (short, merge, revert, release, bump...)."""
    subject = _PR_REF.sub("", " ".join(subject.split()))
    if len(subject.split()) < min_words or _NOISE.match(subject) or _RELEASE.search(subject):
        return None
    return subject


def parse_log(raw: bytes) -> list[LoggedCommit]:
    """Commits from `git log -z --name-status --format=%x1e%H%x1f%P%x1f%s` output."""
    commits = []
    for record in raw.split(b"\x1e")[1:]:
        header, _, rest = record.partition(b"\0")
        sha, parents, subject = header.decode("utf-8", "replace").split("\x1f", 2)
        fields = [f.decode("utf-8", "replace") for f in rest.lstrip(b"\n").split(b"\0")]
        changes = tuple(zip(fields[0::2], fields[1::2]))  # the trailing empty field pairs with nothing
        commits.append(LoggedCommit(sha, (parents.split() or [None])[0], subject, changes))
    return commits


def pick_commits(
    logged: Iterable[LoggedCommit], *, min_words: int = MIN_QUESTION_WORDS, max_gold_files: int = MAX_GOLD_FILES
) -> list[GoldCommit]:
    """The commits whose subject makes a question and that changed 1 to max_gold_files source files.

    A gold file existed at the commit's parent: modified or deleted, not added.
    """
    picked = []
    for commit in logged:
        question = question_of(commit.subject, min_words=min_words)
        if question is None or commit.parent is None:
            continue
        paths = tuple(sorted({path for status, path in commit.changes if status in "MD" and is_source_path(path)}))
        if 1 <= len(paths) <= max_gold_files:
            picked.append(GoldCommit(commit.sha, commit.parent, question, paths))
    return picked


def line_count(data: bytes) -> int:
    """Lines as chunking counts them: split on \\n, a last line without one counted too."""
    return data.count(b"\n") + (not data.endswith(b"\n"))


def commit_questions(commits: Sequence[GoldCommit], files: Mapping[str, bytes]) -> list[Question]:
    """One question per (commit, gold file); the gold span is the whole file as `files` holds it."""
    return [Question(c.question, path, 1, line_count(files[path]), split_of(path)) for c in commits for path in c.paths]


# --- git ----------------------------------------------------------------------------------------


def _git(root: Path, *args: str, stdin: bytes | None = None) -> bytes:
    try:
        result = subprocess.run(
            ["git", *GIT_SAFE_CONFIG, *args],
            cwd=root,
            input=stdin,
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except OSError as err:
        raise DatasetError(f"cannot run git in {root}: {err}") from None
    except subprocess.TimeoutExpired:
        raise DatasetError(f"git {args[0]} timed out after {GIT_TIMEOUT_S}s in {root}") from None
    if result.returncode != 0:
        detail = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DatasetError(f"git {args[0]} failed in {root}: {detail[-1] if detail else result.returncode}")
    return result.stdout


def log(root: Path, commit: str, *, max_commits: int) -> list[LoggedCommit]:
    """The last `max_commits` first-parent, non-merge commits up to `commit` touching `root`'s directory.

    Paths are relative to `root`, which may be a subdirectory of the work tree.
    """
    raw = _git(
        root,
        "log",
        "--first-parent",
        "--no-merges",
        f"--max-count={max_commits}",
        "--no-renames",  # a rename is a deletion (of a file that was there) and an addition
        "--relative",
        "--no-show-signature",
        "--format=%x1e%H%x1f%P%x1f%s",
        "--name-status",
        "-z",
        commit,
        "--",
        ".",
    )
    return parse_log(raw)


def tree_files(root: Path, commit: str, *, max_bytes: int) -> dict[str, bytes]:
    """Every tracked regular file under `root` at `commit` no larger than max_bytes, read from git objects."""
    listing = _git(root, "ls-tree", "-r", "-l", "-z", commit)  # relative to root, limited to it
    wanted: list[tuple[str, str]] = []
    for entry in listing.split(b"\0"):
        if not entry:
            continue
        meta, _, path = entry.partition(b"\t")
        mode, kind, sha, size = meta.decode().split()
        name = path.decode("utf-8", "replace")
        # A tree object may name `..` or `.git` (git refuses to check them out, but clone and fetch accept them).
        if kind == "blob" and mode in _BLOB_MODES and int(size) <= max_bytes and plain_segments(name) is not None:
            wanted.append((name, sha))
    out = _git(root, "cat-file", "--batch", stdin="".join(f"{sha}\n" for _, sha in wanted).encode())
    files, at = {}, 0
    for path, sha in wanted:
        header_end = out.index(b"\n", at)
        header = out[at:header_end].split()
        if len(header) != 3 or header[1] != b"blob":
            raise DatasetError(f"git cannot read {path} ({sha}) in {root}: {out[at:header_end].decode()}")
        start = header_end + 1
        end = start + int(header[2])
        files[path] = out[start:end]
        at = end + 1  # the newline after each object
    return files


def harvest_commits(
    root: str | Path,
    *,
    commit: str = "HEAD",
    max_commits: int = MAX_COMMITS,
    min_commits: int = MIN_COMMITS,
    min_words: int = MIN_QUESTION_WORDS,
    max_gold_files: int = MAX_GOLD_FILES,
    max_bytes: int = 1 << 20,
    max_line_length: int = 1000,
) -> CommitHarvest:
    """Questions from the commits up to `commit` in the git checkout `root`, and the tree they are asked of.

    Raises DatasetError when `root` is not a git checkout or fewer than `min_commits` commits are kept.
    """
    root = Path(root)
    try:
        sha = _git(root, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}").decode().strip()
    except DatasetError:
        raise DatasetError(
            f"{root} is not a git checkout with a commit {commit!r}: the commits harvester needs its history; "
            "use --harvest docstrings or bring a question file with --dataset"
        ) from None
    logged = log(root, sha, max_commits=max_commits)
    picked = pick_commits(logged, min_words=min_words, max_gold_files=max_gold_files)
    base, files, kept = "", {}, []
    if picked:
        base = picked[-1].parent  # the log is newest first
        files = tree_files(root, base, max_bytes=max_bytes)

        def indexed(path: str) -> bool:
            outcome = classify(path, files[path], max_bytes=max_bytes, max_line_length=max_line_length)
            return isinstance(outcome, SourceFile)

        kept = [c for c in picked if all(p in files and indexed(p) for p in c.paths)]
    if len(kept) < min_commits:
        raise DatasetError(
            f"only {len(kept)} of the last {len(logged)} commits in {root} make a question (at least "
            f"{min_commits} needed): a commit counts when its subject has {min_words}+ words and it changes 1 to "
            f"{max_gold_files} non-test source files present at the oldest such commit's parent; "
            "use --harvest docstrings or bring a question file with --dataset"
        )
    return CommitHarvest(base, tuple(kept), tuple(commit_questions(kept, files)), files, len(logged))
