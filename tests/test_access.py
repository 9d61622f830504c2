"""Access control against the real Postgres: grants to users and groups, eval copies, AccessDenied, the CLI."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from grounding import access, store
from grounding.cli import main
from grounding.errors import AccessDenied, RepoNotFound


@pytest.fixture
def names(engine, repo_name):
    """Two repositories, an eval copy of the first, and unique user and group names; memberships removed after."""
    tag = uuid.uuid4().hex[:8]
    repos = {"a": f"{repo_name}-a", "b": f"{repo_name}-b", "a_eval": f"{repo_name}-a~eval-docstrings"}
    with engine.begin() as conn:
        ids = {key: store.upsert_repo(conn, name, source=f"/src/{name}", ref=None) for key, name in repos.items()}
        # Derived in the catalogue, as build_eval_index registers it (the name alone grants nothing).
        store.upsert_repo(conn, repos["a_eval"], source="/src/eval", ref=None, derived_from=ids["a"])
    people = {"alice": f"alice-{tag}", "bob": f"bob-{tag}", "platform": f"platform-{tag}"}
    yield {**repos, **people}
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM group_members WHERE group_name LIKE :t"), {"t": f"%-{tag}"})


def test_grants_to_users_and_groups(names):
    n = names
    access.grant(n["alice"], n["a"])  # a bare name is a user
    access.grant(f"group:{n['platform']}", n["b"])
    access.add_member(n["bob"], n["platform"])

    assert access.allowed_repos(n["alice"]) == sorted([n["a"], n["a_eval"]])  # the eval copy follows its base
    assert access.allowed_repos(f"user:{n['bob']}") == [n["b"]]
    access.add_member(f"user:{n['alice']}", f"group:{n['platform']}")
    assert access.allowed_repos(n["alice"]) == sorted([n["a"], n["a_eval"], n["b"]])

    assert access.grants(n["a"]) == [(f"user:{n['alice']}", n["a"])]
    assert access.grants(n["a_eval"]) == []  # derived access is not a grant of its own
    every = access.grants()
    assert (f"group:{n['platform']}", n["b"]) in every and (f"user:{n['alice']}", n["a"]) in every
    access.grant(n["alice"], n["a"])  # granting twice changes nothing
    assert access.grants(n["a"]) == [(f"user:{n['alice']}", n["a"])]


def test_revoke_and_remove_member(names):
    n = names
    access.grant(n["alice"], n["a"])
    access.grant(f"group:{n['platform']}", n["a"])
    access.add_member(n["alice"], n["platform"])

    access.revoke(n["alice"], n["a"])
    assert access.allowed_repos(n["alice"]) == sorted([n["a"], n["a_eval"]])  # still through the group
    access.remove_member(n["alice"], n["platform"])
    assert access.allowed_repos(n["alice"]) == []
    access.revoke(n["alice"], n["a"])  # nothing left to revoke: no error
    access.remove_member(n["alice"], n["platform"])


def test_a_deleted_repository_takes_its_grants_along(engine, names):
    access.grant(names["alice"], names["b"])
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM repositories WHERE name = :n"), {"n": names["b"]})
    assert access.allowed_repos(names["alice"]) == []
    assert all(repo != names["b"] for _, repo in access.grants())


def test_authorize(names):
    n = names
    access.grant(n["alice"], n["a"])
    access.authorize(n["alice"], [n["a"], n["a_eval"]])
    access.authorize(None, [n["b"], "no-such-repository"])  # a trusted local caller

    with pytest.raises(AccessDenied) as ungranted:
        access.authorize(n["alice"], [n["a"], n["b"]])
    with pytest.raises(AccessDenied) as unknown:
        access.authorize(n["alice"], [n["a"], "no-such-repository"])
    assert ungranted.value.repos == (n["b"],) and unknown.value.repos == ("no-such-repository",)
    # The same message either way: a user cannot learn which repositories exist.
    shape = str(ungranted.value).replace(repr(n["b"]), "REPO")
    assert str(unknown.value).replace(repr("no-such-repository"), "REPO") == shape
    assert f"grounding grant user:{n['alice']} REPO" in shape and "may not read repository REPO" in shape

    with pytest.raises(AccessDenied, match="repositories"):
        access.authorize(n["bob"], [n["a"], n["b"]])


@pytest.mark.parametrize(
    "call",
    [
        lambda n: access.grant("robot:x", n["a"]),
        lambda n: access.grant("user:", n["a"]),
        lambda n: access.grant("two words", n["a"]),
        lambda n: access.add_member("group:ops", n["platform"]),
        lambda n: access.add_member(n["alice"], "user:ops"),
        lambda n: access.allowed_repos("group:ops"),
        lambda n: access.authorize("-x", [n["a"]]),
    ],
)
def test_principals_are_validated(names, call):
    with pytest.raises(ValueError, match="user|group"):
        call(names)


def test_granting_an_unknown_repository_names_it(names):
    with pytest.raises(RepoNotFound, match="no-such-repository"):
        access.grant(names["alice"], "no-such-repository")


def test_cli(names, capsys):
    n = names
    assert main(["grant", n["alice"], n["a"]]) == 0
    assert f"readable by user:{n['alice']}" in capsys.readouterr().out
    assert main(["member", "add", n["bob"], n["platform"]]) == 0
    assert main(["grant", f"group:{n['platform']}", n["b"]]) == 0
    capsys.readouterr()

    assert main(["access", n["bob"]]) == 0
    assert capsys.readouterr().out.split() == [n["b"]]
    assert main(["access"]) == 0
    listing = capsys.readouterr().out
    assert f"user:{n['alice']}" in listing and f"group:{n['platform']}: {n['bob']}" in listing

    assert main(["revoke", n["alice"], n["a"]]) == 0
    assert f"revoked {n['a']} from user:{n['alice']}" in capsys.readouterr().out
    assert main(["revoke", n["alice"], n["a"]]) == 0
    assert "nothing to revoke" in capsys.readouterr().out
    assert main(["access", n["alice"]]) == 0
    assert "may read no repository" in capsys.readouterr().out

    assert main(["member", "remove", n["bob"], n["platform"]]) == 0
    assert main(["access", n["bob"]]) == 0
    assert "may read no repository" in capsys.readouterr().out

    assert main(["grant", "robot:x", n["a"]]) == 2
    assert "user:NAME" in capsys.readouterr().err
    assert main(["grant", n["alice"], "no-such-repository"]) == 1
    assert "is not ingested" in capsys.readouterr().err


def test_a_user_never_sees_an_ungranted_repository_through_any_path(engine, repo_name, hashing, tmp_path, capsys):
    """search, ask (one or several repositories), ask_stream, completion and the CLI all refuse, explicitly."""
    import grounding
    from grounding.answer.completion import complete, prefix_at
    from grounding.index.ingest import ingest
    from grounding.search.retrieve import search
    from tests.conftest import copy_tree

    granted, secret = f"{repo_name}-open", f"{repo_name}-closed"
    ingest(str(copy_tree("requests", tmp_path / "requests")), name=granted, embedder=hashing)
    ingest(str(copy_tree("click", tmp_path / "click")), name=secret, embedder=hashing)
    user = f"carol-{uuid.uuid4().hex[:6]}"
    access.grant(user, granted)
    question = "how are cookies merged into the request"

    answer = grounding.ask(granted, question, user=user)
    assert answer.citations and {c.repo for c in answer.citations} == {granted}
    assert search(granted, question, k=3, user=user)
    denied_calls = [
        lambda: search(secret, question, user=user),
        lambda: grounding.ask(secret, question, user=user),
        lambda: grounding.ask([granted, secret], question, user=user),  # not a partial answer: an error
        lambda: list(grounding.ask_stream(secret, question, user=user)),
        lambda: complete(secret, "def main():\n", user=user),
        lambda: prefix_at(secret, "core.py", 10, user=user),
        lambda: search("no-such-repository", question, user=user),
    ]
    for call in denied_calls:
        with pytest.raises(AccessDenied) as err:
            call()
        assert "may not read" in str(err.value)
    assert main(["ask", secret, question, "--user", user]) == 1
    assert "grounding: error" in capsys.readouterr().err
    assert main(["complete", secret, "core.py:10", "--user", user]) == 1
    # A trusted caller (no user) is not restricted, and a granted group member gets in.
    assert grounding.ask(secret, question).citations
    group = f"team-{uuid.uuid4().hex[:6]}"
    access.grant(f"group:{group}", secret)
    access.add_member(user, group)
    try:
        assert grounding.ask(secret, question, user=user).citations
    finally:
        access.remove_member(user, group)


def test_eval_indexes_of_names_alike_on_disk_never_share_files(engine, repo_name, hashing, tmp_path, monkeypatch):
    """`acme/api` and `acme_api` once shared GROUNDING_HOME/eval/acme_api/: when their eval builds overlapped
    (two nightly flows), one's files were ingested into the other's eval index, readable by its grantees."""
    from grounding.evaluation import eval_index
    from grounding.index.ingest import ingest
    from grounding.search.retrieve import search
    from tests.conftest import git_repo, write_tree

    slash, underscore = f"{repo_name}/api", f"{repo_name}_api"
    sources = {
        slash: {"pub.py": 'def public_helper(x):\n    """Return the public helper value for x."""\n    return x + 1\n'},
        underscore: {
            "crown.py": 'def crown_jewels_pricing(order):\n    """Compute the confidential discount."""\n'
            "    return order.total * 0.0317\n"
        },
    }
    for name, files in sources.items():
        ingest(str(git_repo(write_tree(tmp_path / name.replace("/", "-slash-"), files))), name=name, embedder=hashing)
    alice = f"alice-{uuid.uuid4().hex[:8]}"
    access.grant(alice, slash)

    real_ingest, overlapped = eval_index.ingest, []

    def overlapping(source, *, name, **kwargs):
        if name == f"{slash}~eval-docstrings" and not overlapped:  # the other build runs between tree and ingest
            overlapped.append(eval_index.build_eval_index(underscore))
        return real_ingest(source, name=name, **kwargs)

    monkeypatch.setattr(eval_index, "ingest", overlapping)
    eval_index.build_eval_index(slash)
    assert overlapped
    hits = search(f"{slash}~eval-docstrings", "crown jewels pricing discount order total", k=20, user=alice)
    assert {h.citation.path for h in hits} == {"pub.py"}
    assert eval_index.eval_dir(slash) != eval_index.eval_dir(underscore)
