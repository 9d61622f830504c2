"""Every public entry point, walked as a user granted one of two repositories: nothing of the other comes back.

The closed repository's code carries markers (its path, its symbols, a constant in its body). Each
entry point is called as `alice`, who may read only the open one, with questions aimed at the closed
one; everything that comes back (return values, CLI output, every element of every copilot page, flow
states and their errors) is searched for the markers. Removing any one access check makes this fail.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from streamlit.testing.v1 import AppTest

import grounding
from grounding import access, db, store
from grounding.answer.completion import complete, prefix_at
from grounding.cli import main
from grounding.config import reset_settings
from grounding.errors import AccessDenied, GroundingError, InvalidArgument, SourceConflict
from grounding.index.ingest import ingest
from grounding.search.retrieve import search
from grounding.service import status
from tests.conftest import git_repo

APP = Path(__file__).resolve().parent.parent / "app"
MARKERS = ("zebra", "quagga", "vault")  # in the closed repository only: path, symbols, body
QUESTION = "how is the zebra ledger reconciled with the quagga constant?"


@pytest.fixture(scope="module")
def world(database_url, tmp_path_factory):
    """`open` (granted to alice) and `closed` (granted to nobody), both real git checkouts, hashing vectors."""
    from grounding.index.embed import HashingEmbedder

    patch = pytest.MonkeyPatch()
    patch.setenv("GROUNDING_DATABASE_URL", database_url)
    patch.setenv("GROUNDING_HOME", str(tmp_path_factory.mktemp("home")))
    patch.setenv("GROUNDING_ENCODER", "hashing-64")
    reset_settings()
    tag = uuid.uuid4().hex[:8]
    root = tmp_path_factory.mktemp("src")
    opened = root / "open"
    (opened / "ledger").mkdir(parents=True)
    (opened / "ledger" / "reconcile.py").write_text(
        'def reconcile_ledger(entries):\n    """Reconcile the ledger with the bank."""\n    return sum(entries)\n'
    )
    closed = root / "closed"
    (closed / "vault").mkdir(parents=True)
    (closed / "vault" / "zebra_ledger.py").write_text(
        "QUAGGA_CONSTANT = 17\n\n\ndef reconcile_zebra_ledger(entries):\n"
        '    """Reconcile the zebra ledger with the quagga constant."""\n    return sum(entries) * QUAGGA_CONSTANT\n'
    )
    names = {"open": f"t-{tag}-open", "closed": f"t-{tag}-closed", "alice": f"alice-{tag}"}
    embedder = HashingEmbedder(64)
    for key, src in (("open", opened), ("closed", closed)):
        ingest(str(git_repo(src)), name=names[key], embedder=embedder)
    access.grant(names["alice"], names["open"])
    yield {**names, "open_dir": opened, "closed_dir": closed}
    with db.get_engine().begin() as conn:
        conn.execute(sa.text("DELETE FROM repositories WHERE name LIKE :n"), {"n": f"t-{tag}-%"})
    patch.undo()
    reset_settings()


def leaks(*things: object, allow_name: bool = False, given: tuple[str, ...] = (), world: dict) -> list[str]:
    """The markers of the closed repository found in the text of `things` (its name too, unless allowed),
    once what the caller typed (the question, and the `given` arguments) is taken out: echoing it back
    discloses nothing."""
    text = "\n".join(map(str, things)).lower()
    for typed in (QUESTION, *given):
        text = text.replace(typed.lower(), "")
    markers = [*MARKERS, *(() if allow_name else (world["closed"].lower(),))]
    return [m for m in markers if m in text]


def refused(call, kind: type[GroundingError], world: dict, *given: str) -> str:
    """Call something that must refuse with `kind` (not by luck with another error); its error may echo
    what the caller gave, nothing else."""
    with pytest.raises(kind) as err:
        result = call()
        if hasattr(result, "__next__"):
            list(result)
    assert not leaks(err.value, allow_name=True, given=given, world=world), err.value
    return str(err.value)


def test_python_api(world, engine):
    w, alice = world, world["alice"]
    answer = grounding.ask(w["open"], QUESTION, user=alice)
    assert answer.citations and not leaks(answer, world=w)
    assert not leaks(list(grounding.ask_stream(w["open"], QUESTION, user=alice)), world=w)
    assert not leaks(search(w["open"], QUESTION, k=10, user=alice), world=w)
    assert not leaks(search(w["open"], f"path:vault/** {QUESTION}", user=alice), world=w)
    for role in ("source", "test", "docs"):  # the role filter and the prior stay inside the granted repository
        assert not leaks(search(w["open"], f"role:{role} {QUESTION}", user=alice), world=w)
    assert access.allowed_repos(alice) == [w["open"]]
    assert status.repo_scope(alice).names == [w["open"]]
    closed_file = str(w["closed_dir"] / "vault" / "zebra_ledger.py")
    denied, bad, conflict = AccessDenied, InvalidArgument, SourceConflict
    for call, kind, *given in (
        (lambda: grounding.ask(w["closed"], QUESTION, user=alice), denied),
        (lambda: grounding.ask([w["open"], w["closed"]], QUESTION, user=alice), denied),
        (lambda: grounding.ask_stream(w["closed"], QUESTION, user=alice), denied),
        (lambda: search(w["closed"], QUESTION, user=alice), denied),
        (lambda: search(w["closed"], f"role:source {QUESTION}", user=alice), denied),
        (lambda: search(f"{w['closed']}~eval-docstrings", QUESTION, user=alice), denied),  # its eval index
        (lambda: complete(w["closed"], "def reconcile(", user=alice), denied),
        (lambda: prefix_at(w["closed"], "vault/zebra_ledger.py", None, user=alice), denied, "vault/zebra_ledger.py"),
        (
            lambda: prefix_at(w["open"], "../closed/vault/zebra_ledger.py", None, user=alice),
            bad,
            "../closed/vault/zebra_ledger.py",
        ),
        (lambda: prefix_at(w["open"], closed_file, None, user=alice), bad, closed_file),
        (lambda: ingest(str(w["closed_dir"]), name=w["open"], user=alice), conflict),  # re-point a granted name
        (lambda: ingest(str(w["closed_dir"]), name=w["closed"], user=alice), denied),
        (lambda: ingest(str(w["closed_dir"]), name=f"{w['open']}-copy", user=alice), denied),
    ):
        refused(call, kind, w, *given)
    with engine.connect() as conn:
        assert store.repo_source(conn, w["open"])[0] == str(w["open_dir"].resolve()), "nothing was re-pointed"
        assert store.repo_record(conn, f"{w['open']}-copy") is None


def test_cli(world, capsys):
    w, alice = world, world["alice"]
    assert main(["ask", w["open"], QUESTION, "--user", alice]) == 0
    out = capsys.readouterr()
    assert "reconcile" in out.out and not leaks(out.out, out.err, world=w)
    for argv in (
        ["ask", w["closed"], QUESTION, "--user", alice],
        ["ask", w["open"], QUESTION, "--repo", w["closed"], "--user", alice],
        ["complete", w["closed"], "vault/zebra_ledger.py:3", "--user", alice],
        ["complete", w["open"], "../closed/vault/zebra_ledger.py:3", "--user", alice],
    ):
        assert main(argv) == 1, argv
        out = capsys.readouterr()
        assert out.err.startswith("grounding: error"), out.err
        assert not leaks(out.out, out.err, allow_name=True, given=(argv[2].rsplit(":", 1)[0],), world=w)


def rendered(at: AppTest) -> str:
    """Every element the page rendered, as text: its protobuf holds labels, values, options and table cells."""
    parts, stack = [], [at._tree]
    while stack:
        node = stack.pop()
        if getattr(node, "proto", None) is not None:
            parts.append(str(node.proto))
        children = getattr(node, "children", {})
        stack.extend(children.values() if isinstance(children, dict) else children)
    return "\n".join(parts)


def run_page(name: str, monkeypatch, user: str, **query) -> AppTest:
    monkeypatch.syspath_prepend(str(APP))
    monkeypatch.setenv("GROUNDING_UI_USER", user)
    monkeypatch.setenv("GROUNDING_UI_AUTH", "none")  # the server's one user, as `grounding ui --user` on loopback
    at = AppTest.from_file(str(APP / name), default_timeout=120)
    for key, values in query.items():
        at.query_params[key] = values
    at.run()
    assert not at.exception, at.exception
    return at


def test_every_copilot_page(world, monkeypatch, loopback_ui):
    w, alice = world, world["alice"]
    at = run_page("copilot.py", monkeypatch, alice, repo=[w["open"], w["closed"]])  # a link naming both
    assert at.multiselect(key="repos").options == [w["open"]]
    at.multiselect(key="repos").set_value([w["open"]]).run()
    at.chat_input(key="question").set_value(QUESTION).run()
    assert not at.exception and "reconcile_ledger" in rendered(at)
    assert not leaks(rendered(at), world=w)
    for page in ("pages/1_Ingest.py", "pages/2_Index.py", "pages/3_Training.py"):
        at = run_page(page, monkeypatch, alice)
        assert w["open"] in rendered(at), page
        assert not leaks(rendered(at), world=w), page
        assert str(w["open_dir"]) not in rendered(at), f"{page}: a server path is an administrator's"


def test_server_details_of_a_failed_ingest_are_not_shown_to_a_user(world, monkeypatch, tmp_path, loopback_ui):
    """A failed ingest's error names server paths: alice, granted the repository, learns that it failed."""
    import sys

    broken = world["open"].removesuffix("-open") + "-broken"
    src = tmp_path / "broken"
    src.mkdir()
    (src / "a.py").write_text("def a():\n    return 1\n")

    def fail(*args, **kwargs):
        raise RuntimeError("could not read /srv/secret-mount/ledger.db")

    with monkeypatch.context() as patch:
        patch.setattr(sys.modules["grounding.index.ingest"], "_write_snapshot", fail)
        with pytest.raises(GroundingError):
            ingest(str(git_repo(src)), name=broken)
    access.grant(world["alice"], broken)
    try:
        at = run_page("pages/2_Index.py", monkeypatch, world["alice"])
        at.selectbox(key="index_repo").set_value(broken).run()
        shown = rendered(at)
    finally:  # the world's other tests see alice with one repository
        with db.get_engine().begin() as conn:
            conn.execute(sa.text("DELETE FROM repositories WHERE name = :n"), {"n": broken})
    assert "an administrator can read why" in shown and broken in shown
    assert "secret-mount" not in shown and str(src) not in shown


def test_the_ingest_page_re_ingests_only_what_the_user_may_read(world, monkeypatch, prefect_server, loopback_ui):
    w, alice = world, world["alice"]
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    at = run_page("pages/1_Ingest.py", monkeypatch, alice)
    import ingest_jobs  # app/ is on sys.path now: the module the page itself uses

    assert at.selectbox[0].options == [w["open"]] and not at.text_input, "no free-text source for a user"
    at.button[0].click().run()
    assert at.subheader and str(w["open_dir"].resolve()) not in rendered(at), "the source is a server path"
    job = ingest_jobs.job(at.session_state["ingest_job"])
    deadline = time.monotonic() + 120
    while not job.finished and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job.status == "complete", job.error
    assert job.source == str(w["open_dir"].resolve())
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["ingest-repo"])), sort=FlowRunSort.START_TIME_DESC, limit=1
        )
    assert run.parameters["user"] == alice, "the flow checks the user itself, whatever the page offered"


def test_flows_with_user_parameters(world, engine, prefect_server):
    from flows.ingest import ingest_repo

    w, alice = world, world["alice"]
    for params in (
        {"source": str(w["closed_dir"]), "name": w["open"], "user": alice},
        {"source": str(w["closed_dir"]), "name": w["closed"], "user": alice},
        {"source": str(w["open_dir"]), "name": w["open"], "user": alice, "replace_source": True},
    ):
        state = ingest_repo(**params, return_state=True)
        assert state.is_failed(), params
        with pytest.raises((AccessDenied, SourceConflict)) as err:
            state.result()
        assert not leaks(err.value, allow_name=True, world=w)
    with engine.connect() as conn:
        assert store.repo_source(conn, w["open"])[0] == str(w["open_dir"].resolve())
    assert not leaks(grounding.ask(w["open"], QUESTION, user=alice), world=w)
