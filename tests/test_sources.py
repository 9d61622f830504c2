"""Reading a repository: ignore rules, git's tracked files, git URLs, and every reason a file is skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from grounding.errors import InvalidArgument, SourceNotFound, SourceUnreachable
from grounding.index import sources
from grounding.index.sources import classify, list_files, open_source
from tests.conftest import copy_tree, git, git_repo, write_tree

LIMITS = {"max_bytes": 1 << 20, "max_line_length": 1000}


def listing(root: Path):
    out = list_files(open_source(str(root), checkouts=root.parent / "co", name="x"), **LIMITS)
    return {f.path for f in out.files}, {s.path: s.reason for s in out.skipped}, out


def test_walk_respects_nested_gitignore_rules(tmp_path):
    root = tmp_path / "r"
    (root / "pkg" / "build").mkdir(parents=True)
    (root / "pkg" / "gen").mkdir()
    (root / ".gitignore").write_text("*.log\nbuild/\n")
    (root / "pkg" / ".gitignore").write_text("gen/\n!keep.log\n")
    (root / "a.py").write_text("x = 1\n")
    (root / "debug.log").write_text("noise\n")
    (root / "pkg" / "keep.log").write_text("kept by negation\n")
    (root / "pkg" / "b.py").write_text("y = 2\n")
    (root / "pkg" / "build" / "c.py").write_text("z = 3\n")
    (root / "pkg" / "gen" / "d.py").write_text("w = 4\n")
    files, _, _ = listing(root)
    assert files == {".gitignore", "a.py", "pkg/.gitignore", "pkg/b.py", "pkg/keep.log"}


def test_git_checkout_uses_tracked_files_and_records_commit(tmp_path):
    root = copy_tree("requests", tmp_path / "requests")
    (root / ".gitignore").write_text("ignored_*.py\n")
    git_repo(root)
    (root / "untracked.py").write_text("def untracked(): pass\n")
    (root / "ignored_x.py").write_text("def ignored(): pass\n")
    checkout = open_source(str(root), checkouts=tmp_path / "co", name="requests")
    assert checkout.is_git and checkout.commit == git(root, "rev-parse", "HEAD")
    files, _, _ = listing(root)
    assert "sessions.py" in files and "untracked.py" not in files and "ignored_x.py" not in files


def test_git_url_is_cloned_at_a_ref(tmp_path):
    origin = copy_tree("requests", tmp_path / "origin")
    git_repo(origin)
    first = git(origin, "rev-parse", "HEAD")
    git(origin, "tag", "v1")
    (origin / "new_module.py").write_text("def added_later(): pass\n")
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "second")
    url = f"file://{origin}"
    at_tag = open_source(url, checkouts=tmp_path / "co", name="req", ref="v1")
    assert at_tag.commit == first and not (at_tag.root / "new_module.py").exists()
    latest = open_source(url, checkouts=tmp_path / "co", name="req")  # fetches into the same checkout
    assert latest.commit == git(origin, "rev-parse", "HEAD") and (latest.root / "new_module.py").exists()


def test_a_branch_ref_is_the_remotes_branch_and_follows_it_on_each_fetch(tmp_path):
    """`--ref develop`: a branch that is not the default (the clone makes no local branch of it), and `--ref main`
    after main moved (the clone's local main would stay where it was cloned)."""
    origin = git_repo(write_tree(tmp_path / "origin", {"a.py": "def a():\n    return 0\n"}))
    git(origin, "checkout", "-q", "-b", "develop")
    (origin / "a.py").write_text("def a():\n    return 'develop'\n")
    git(origin, "commit", "-qam", "on develop")
    git(origin, "checkout", "-q", "main")
    url = f"file://{origin}"
    develop = open_source(url, checkouts=tmp_path / "co", name="r", ref="develop")
    assert develop.commit == git(origin, "rev-parse", "develop") and "develop" in (develop.root / "a.py").read_text()
    assert open_source(url, checkouts=tmp_path / "co", name="r", ref="main").commit == git(origin, "rev-parse", "main")
    (origin / "a.py").write_text("def a():\n    return 'main moved'\n")
    git(origin, "commit", "-qam", "main moves")
    moved = open_source(url, checkouts=tmp_path / "co", name="r", ref="main")
    assert moved.commit == git(origin, "rev-parse", "main") and "main moved" in (moved.root / "a.py").read_text()


def test_a_ref_resolves_as_git_would_and_never_to_a_branch_the_remote_dropped(tmp_path):
    """A tag before a branch of the same name, a full commit id before anything named like it (who may push a
    branch must not move a pinned release), and a branch the remote renamed is an error, not the clone's stale
    local copy; `current_commit` (what refresh compares) agrees with what is checked out."""
    origin = git_repo(write_tree(tmp_path / "origin", {"a.py": "def a():\n    return 'one'\n"}))
    one = git(origin, "rev-parse", "HEAD")
    git(origin, "tag", "-a", "v1", "-m", "release one")  # annotated: ls-remote lists its commit as v1^{}
    (origin / "a.py").write_text("def a():\n    return 'two'\n")
    git(origin, "commit", "-qam", "two")
    git(origin, "branch", "v1")  # a branch named like the tag, at another commit
    git(origin, "branch", one)  # and one named like the pinned commit
    git(origin, "branch", "feature/main")
    git(origin, "commit", "-qam", "three", "--allow-empty")  # main moves on; feature/main stays
    url, co = f"file://{origin}", tmp_path / "co"
    for ref, commit in (("v1", one), ("refs/tags/v1", one), (one, one), ("main", git(origin, "rev-parse", "main"))):
        assert open_source(url, checkouts=co, name="r", ref=ref).commit == commit, ref
        assert sources.current_commit(url, ref) == commit, ref
    branch = git(origin, "rev-parse", "refs/heads/v1")
    assert open_source(url, checkouts=co, name="r", ref="refs/heads/v1").commit == branch
    feature = git(origin, "rev-parse", "feature/main")
    for ref in ("origin/feature/main", "refs/remotes/origin/feature/main", "tags/v1"):  # other spellings agree
        assert open_source(url, checkouts=co, name="r", ref=ref).commit == sources.current_commit(url, ref), ref
    assert open_source(url, checkouts=co, name="r", ref="origin/feature/main").commit == feature
    for ref in ("FETCH_HEAD", one[:10], "refs/notes/x"):  # refresh could not follow these: refused
        with pytest.raises((SourceUnreachable, InvalidArgument)):
            open_source(url, checkouts=co, name="r", ref=ref)
    assert open_source(url, checkouts=co, name="r", ref=one.upper()).commit == one
    with pytest.raises(SourceUnreachable, match=f"no commit {'a' * 40} on the remote's branches and tags"):
        open_source(url, checkouts=co, name="r", ref="a" * 40)  # was git's "Needed a single revision"
    # The remote moves its tag, then deletes it: the clone follows (fetch used to fail, then keep the old tag).
    git(origin, "tag", "-f", "-a", "v1", "-m", "moved", feature)
    assert open_source(url, checkouts=co, name="r", ref="v1").commit == feature == sources.current_commit(url, "v1")
    git(origin, "tag", "-d", "v1")
    v1 = git(origin, "rev-parse", "refs/heads/v1")
    assert open_source(url, checkouts=co, name="r", ref="v1").commit == v1 == sources.current_commit(url, "v1")
    # The remote renames main and makes trunk its default: `main` is gone, no ref follows trunk.
    git(origin, "branch", "-m", "main", "trunk")
    with pytest.raises(SourceUnreachable, match="no tag or branch 'main'"):
        open_source(url, checkouts=co, name="r", ref="main")
    with pytest.raises(SourceNotFound, match="no tag or branch 'main'"):
        sources.current_commit(url, "main")
    trunk = git(origin, "rev-parse", "trunk")
    assert open_source(url, checkouts=co, name="r").commit == trunk == sources.current_commit(url, None)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a checkout to another user needs root")
def test_a_checkout_git_refuses_to_read_is_an_error_not_a_plain_directory(tmp_path):
    """git will not read a repository another user owns (safe.directory); walking it instead would index its
    untracked files, which the README promises a git checkout never does."""
    root = git_repo(write_tree(tmp_path / "theirs", {"tracked.py": "def t():\n    return 1\n"}))
    (root / "untracked_notes.py").write_text("NOTES = 'not for the index'\n")
    for path in [root, *root.rglob("*")]:
        os.lchown(path, 65534, 65534)  # nobody
    with pytest.raises(SourceNotFound, match="owned by another user"):
        open_source(str(root), checkouts=tmp_path / "co", name="r")


def test_a_repository_git_cannot_read_is_an_error_in_any_language(tmp_path, monkeypatch):
    """Only "not a git repository" means a plain directory to walk; any other refusal (here an extension this
    git does not know) is an error, whatever language the server's git speaks."""
    root = git_repo(write_tree(tmp_path / "r", {"t.py": "def t():\n    return 1\n"}))
    (root / "untracked.py").write_text("NOTES = 1\n")
    git(root, "config", "core.repositoryformatversion", "1")
    git(root, "config", "extensions.grounding-test-unknown", "true")
    monkeypatch.setenv("LANGUAGE", "de")
    with pytest.raises(SourceNotFound, match="git cannot read"):
        open_source(str(root), checkouts=tmp_path / "co", name="r")


def test_every_skipped_file_has_its_reason(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    (root / "ok.py").write_text("def ok():\n    return 1\n")
    (root / "empty.py").write_text("")
    (root / "blank.txt").write_text("  \n\n")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0IHDR")
    (root / "huge.py").write_text("x = 1\n" * 200_000)
    (root / "bundle.js").write_text("var a=1;" * 500)
    (root / "app.min.js").write_text("var a=1;\n")
    (root / "latin1.py").write_bytes("# caf\xe9\nname = 'Andr\xe9'\n".encode("latin-1"))
    outside = tmp_path / "secret.py"
    outside.write_text("TOKEN = 'x'\n")
    os.symlink(outside, root / "escape.py")
    os.symlink(root / "ok.py", root / "alias.py")
    files, skipped, out = listing(root)
    assert files == {"ok.py", "latin1.py"}
    assert skipped == {
        "empty.py": "empty",
        "blank.txt": "empty",
        "image.png": "binary",
        "huge.py": "too-large",
        "bundle.js": "minified",
        "app.min.js": "generated",
        "escape.py": "symlink-outside-repo",
        "alias.py": "symlink",
    }
    latin = next(f for f in out.files if f.path == "latin1.py")
    assert latin.decode_errors


def test_classify_keeps_a_file_with_one_long_line():
    data = b"def f():\n    return 1\n" * 100 + b"DATA = '" + b"x" * 2000 + b"'\n"
    assert classify("m.py", data, **LIMITS).__class__.__name__ == "SourceFile"


@pytest.mark.parametrize(
    "source, message",
    [
        ("/definitely/not/here", "does not exist"),
        ("file:///definitely/not/here.git", "cannot fetch"),
        ("https://127.0.0.1:9/nobody/nothing.git", "cannot fetch"),
    ],
)
def test_bad_sources_say_what_to_do(tmp_path, source, message):
    with pytest.raises(SourceNotFound, match=message):
        open_source(source, checkouts=tmp_path / "co", name="x")


def test_a_file_is_not_a_repository(tmp_path):
    f = tmp_path / "one.py"
    f.write_text("x = 1\n")
    with pytest.raises(SourceNotFound, match="not a directory"):
        open_source(str(f), checkouts=tmp_path / "co", name="x")


def test_an_untracked_directory_inside_a_work_tree_is_walked(tmp_path):
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / ".gitignore").write_text("vendor/\n")
    (outer / "main.py").write_text("x = 1\n")
    git_repo(outer)
    vendored = copy_tree("requests", outer / "vendor" / "requests")
    checkout = open_source(str(vendored), checkouts=tmp_path / "co", name="x")
    assert not checkout.is_git and checkout.commit is None
    files, _, _ = listing(vendored)
    assert "sessions.py" in files


@pytest.mark.parametrize(
    "url, hosts, asked, lent",
    [
        ("https://git.corp.example/acme/api.git", "git.corp.example", "https://git.corp.example", True),
        ("https://git.corp.example/acme/api.git", "", "https://git.corp.example", False),  # no host named
        ("https://evil.example/r.git", "git.corp.example", "https://evil.example", False),
        ("http://git.corp.example/acme/api.git", "git.corp.example", "http://git.corp.example", False),  # clear text
        ("https://git.corp.example/a.git", "git.corp.example", "https://evil.example", False),  # a redirect
        ("https://u:pw@other.example/a.git", "", "https://other.example", True),  # the URL's own, for its host
        ("https://u:pw@other.example/a.git", "", "https://evil.example", False),
    ],
)
def test_git_credentials_go_only_to_the_hosts_they_are_lent_to(monkeypatch, url, hosts, asked, lent):
    """Real git asks the real credential helper, as a clone would; only a lent protocol://host gets an answer."""
    monkeypatch.setenv("GROUNDING_GIT_TOKEN", "ghp_COMPANYWIDE")
    monkeypatch.setenv("GROUNDING_GIT_HOSTS", hosts)
    protocol, host = asked.split("://")
    result = subprocess.run(
        ["git", "-c", f"credential.helper={sources._CREDENTIAL_HELPER}", "credential", "fill"],
        input=f"protocol={protocol}\nhost={host}\n\n",
        capture_output=True,
        text=True,
        env=sources._git_env(url),
    )
    answered = "password=" in result.stdout
    assert answered == lent, result.stdout + result.stderr
    if lent:
        assert ("password=pw" if "pw@" in url else "password=ghp_COMPANYWIDE") in result.stdout


def test_a_path_read_back_from_a_stored_listing_stays_inside_the_checkout(tmp_path):
    """What a shard reads (sources.read_file): a plain relative path under the root, nothing else."""
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("def inside():\n    pass\n")
    outside = tmp_path / "other-company"
    outside.mkdir()
    (outside / "secret.py").write_text("KEY = 'theirs'\n")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    limits = {"max_bytes": 1 << 20, "max_line_length": 1000}
    assert sources.read_file(root, "pkg/mod.py", **limits).path == "pkg/mod.py"
    for rel in (
        "../other-company/secret.py",
        str(outside / "secret.py"),
        "linked/secret.py",
        "pkg/../../other-company/secret.py",
        "./pkg/mod.py",
        "pkg//mod.py",
        "pkg\\mod.py",
        "",
    ):
        found = sources.read_file(root, rel, **limits)
        assert found.reason == "outside-repo", rel


def test_a_directory_swapped_for_a_link_after_listing_reads_nothing_from_where_it_points(tmp_path):
    """git lists d/x.py; by the time it is read d is a link to another checkout (a shard moved the tree): the
    listing skips it as outside-repo and holds none of the other checkout's bytes. A FIFO is refused at once."""
    root = git_repo(
        write_tree(tmp_path / "repo", {"d/x.py": "def ours():\n    pass\n", "keep.py": "def kept():\n    pass\n"})
    )
    victim = write_tree(tmp_path / "repo-7", {"x.py": "def theirs():\n    return 'SECRET'\n"})
    shutil.rmtree(root / "d")
    (root / "d").symlink_to(victim, target_is_directory=True)
    checkout = sources.open_source(str(root), checkouts=tmp_path / "checkouts", name="_")
    listing = sources.list_files(checkout, max_bytes=1 << 20, max_line_length=1000)
    assert [f.path for f in listing.files] == ["keep.py"]
    assert [(s.path, s.reason) for s in listing.skipped] == [("d/x.py", "outside-repo")]
    assert all(b"SECRET" not in f.data for f in listing.files)
    os.mkfifo(root / "pipe.py")  # opened without waiting for a writer, then refused
    assert sources.read_file(root, "pipe.py", max_bytes=1 << 20, max_line_length=1000).reason == "not-a-file"


def test_a_loop_of_links_is_skipped_with_a_reason(tmp_path):
    root = tmp_path / "repo"
    (root / "d").mkdir(parents=True)
    (root / "loop.py").symlink_to("loop.py")
    (root / "d" / "a.py").symlink_to("b.py")
    (root / "d" / "b.py").symlink_to("a.py")
    for rel in ("loop.py", "d/a.py"):
        assert sources.read_file(root, rel, max_bytes=1 << 20, max_line_length=1000).reason.startswith("symlink")


def test_a_submodule_is_skipped_as_not_a_file_and_no_descriptor_is_left_open(tmp_path):
    root = git_repo(write_tree(tmp_path / "repo", {"main.py": "def main():\n    pass\n"}))
    commit = git(root, "rev-parse", "HEAD")
    git(root, "update-index", "--add", "--cacheinfo", f"160000,{commit},vendor/lib")  # a gitlink, as a submodule
    (root / "vendor" / "lib").mkdir(parents=True)
    checkout = sources.open_source(str(root), checkouts=tmp_path / "checkouts", name="_")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        listing = sources.list_files(checkout, max_bytes=1 << 20, max_line_length=1000)
    assert [f.path for f in listing.files] == ["main.py"]
    assert [(s.path, s.reason) for s in listing.skipped] == [("vendor/lib", "not-a-file")]
    assert len(os.listdir("/proc/self/fd")) <= before + 1
