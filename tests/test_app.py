"""The Streamlit copilot, page by page, through streamlit.testing's AppTest against the real database.

AppTest runs the pages in this process, so they read the GROUNDING_* variables the fixtures set.
`streamlit run app/copilot.py` puts app/ on sys.path for the pages' shared modules; the tests do the same.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from streamlit.testing.v1 import AppTest

from grounding.config import reset_settings
from tests.conftest import copy_tree, git_repo

APP = Path(__file__).resolve().parent.parent / "app"
TIMEOUT = 120  # seconds per script run: the machine running the tests may be busy
LABEL = re.compile(r"^\[(\d+)\] (\S+\.py):(\d+)-(\d+)@([0-9a-f]{12})$")


@pytest.fixture(autouse=True)
def app_on_path(monkeypatch, loopback_ui):
    monkeypatch.syspath_prepend(str(APP))
    monkeypatch.setenv("GROUNDING_UI_AUTH", "none")  # as `grounding ui` on loopback; tests/test_ui_login.py signs in


@pytest.fixture(scope="module")
def ingested(database_url, tmp_path_factory):
    """A git checkout of `requests` (with a binary file, to be skipped) ingested with the hashing embedder,
    and a second small repository beside it; both deleted after the module."""
    from grounding import db
    from grounding.index.embed import HashingEmbedder
    from grounding.index.ingest import ingest

    patch = pytest.MonkeyPatch()
    patch.setenv("GROUNDING_DATABASE_URL", database_url)
    patch.setenv("GROUNDING_HOME", str(tmp_path_factory.mktemp("home")))
    reset_settings()
    name = f"t-{uuid.uuid4().hex[:10]}"
    src = copy_tree("requests", tmp_path_factory.mktemp("src") / "requests")
    (src / "logo.bin").write_bytes(b"\0\1\2")
    git_repo(src)
    other = tmp_path_factory.mktemp("src") / "other"
    other.mkdir()
    (other / "other.py").write_text("def other_function():\n    return 'hidden from the granted user'\n")
    embedder = HashingEmbedder(64)
    ingest(str(src), name=name, embedder=embedder)
    ingest(str(other), name=f"{name}-other", embedder=embedder)
    yield name
    with db.get_engine().begin() as conn:
        conn.execute(sa.text("DELETE FROM repositories WHERE name LIKE :n"), {"n": name + "%"})
    patch.undo()
    reset_settings()


def page(name: str) -> AppTest:
    at = AppTest.from_file(str(APP / name), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def test_chat_streams_an_answer_and_shows_each_citation_with_its_lines(engine, ingested, monkeypatch):
    monkeypatch.delenv("GROUNDING_UI_USER", raising=False)
    at = page("copilot.py")
    assert any("trusted mode" in w.value for w in at.sidebar.warning), "local trusted mode is labelled"
    assert ingested in at.multiselect(key="repos").options
    at.multiselect(key="repos").set_value([ingested]).run()
    at.chat_input(key="question").set_value("how does a session resolve redirects?").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]

    labels = [e.label.replace("`", "") for e in at.expander]  # the location is shown as code
    assert labels and all(LABEL.match(label) for label in labels), labels
    n, path, start, end, commit = LABEL.match(labels[0]).groups()
    assert n == "1" and int(start) <= int(end)
    listing = at.get("html")[0].proto.body
    cited = [int(n) for n in re.findall(r'data-line="(\d+)" data-cited', listing)]
    assert cited == list(range(int(start), int(end) + 1)), "the cited lines, numbered as in the file"
    shown = [int(n) for n in re.findall(r'data-line="(\d+)"', listing)]
    assert shown == list(range(shown[0], shown[-1] + 1)) and shown[0] < int(start), "with context, in order"
    assert any("not a written answer" in c.value for c in at.caption), "the extractive mode says what it is"
    assert any("[1]" in m.value for m in at.markdown), "the answer text cites [1]"

    at.run()  # the conversation stays on the page across reruns
    assert [e.label.replace("`", "") for e in at.expander] == labels

    at.chat_input(key="question").set_value("how are redirects resolved? path:sessions.py kind:method").run()
    assert not at.exception and not at.error, at.error
    assert any(c.value == "Filters: path sessions.py · kind method" for c in at.caption)
    filtered = [e.label.replace("`", "") for e in at.expander][len(labels) :]
    assert filtered and all(LABEL.match(label).group(2) == "sessions.py" for label in filtered), filtered


def test_chat_reports_errors_without_a_traceback(engine, ingested, monkeypatch):
    monkeypatch.delenv("GROUNDING_UI_USER", raising=False)
    at = page("copilot.py")
    at.multiselect(key="repos").set_value([ingested]).run()
    at.chat_input(key="question").set_value("   ").run()  # an empty question is refused by ask
    assert not at.exception, at.exception
    assert at.error, "the refusal is shown as an error box"


def _page_whose_repository_vanished():
    from ui_common import errors_as_messages

    from grounding.errors import RepoNotFound

    with errors_as_messages("Reading the snapshots"):
        raise RepoNotFound("gone", ["payroll-secret", "gone-not"])  # as store.repo_id raises it


def test_a_repository_not_found_is_shown_without_the_list_of_every_repository():
    """store.repo_id's RepoNotFound names every repository; a page showing it as is would list them."""
    at = AppTest.from_function(_page_whose_repository_vanished, default_timeout=60)
    at.run()
    assert not at.exception and [e.value for e in at.error] == [
        "Reading the snapshots: no repository 'gone' that you may read"
    ]


def _page_whose_generator_and_disk_fail():
    from ui_common import errors_as_messages, shown_encoder

    from grounding.errors import GeneratorUnavailable

    with errors_as_messages("Answering"):
        raise GeneratorUnavailable("the OpenAI-compatible server at http://10.1.2.3:8000/v1 reported an error")
    with errors_as_messages("Reading"):
        raise PermissionError(13, "Permission denied", "/srv/private/runs/7/model.pt")
    import streamlit as st

    st.caption(shown_encoder("realm:/srv/private/runs/7#query"))


@pytest.mark.parametrize("user", [None, "alice"])
def test_server_details_in_errors_and_encoders_are_for_local_trusted_mode_only(monkeypatch, user):
    """The API tells a user that the generator is unavailable, not where it is; the copilot now does the same."""
    if user:
        monkeypatch.setenv("GROUNDING_UI_USER", user)
    else:
        monkeypatch.delenv("GROUNDING_UI_USER", raising=False)
    at = AppTest.from_function(_page_whose_generator_and_disk_fail, default_timeout=60)
    at.run()
    shown = " ".join([e.value for e in at.error] + [c.value for c in at.caption])
    assert not at.exception and len(at.error) == 2
    assert ("10.1.2.3" in shown and "/srv/private" in shown) == (user is None), shown
    if user:
        assert "generator is unavailable" in shown and "PermissionError" in shown and "7#query" in shown


def test_picker_shows_only_the_repositories_granted_to_the_user(engine, ingested, monkeypatch):
    from grounding.access import grant

    monkeypatch.setenv("GROUNDING_UI_USER", "alice")
    grant("user:alice", ingested)  # not f"{ingested}-other"
    at = page("copilot.py")
    assert at.multiselect(key="repos").options == [ingested]
    assert any("alice" in i.value for i in at.sidebar.info), "the user is named"
    at.chat_input(key="question").set_value("how does a session resolve redirects?").run()
    assert not at.exception and not at.error, at.error
    assert at.expander, "alice gets cited code from her repository"

    monkeypatch.setenv("GROUNDING_UI_USER", "mallory")  # granted nothing
    at = page("copilot.py")
    assert not at.multiselect and any("No repository" in i.value for i in at.info)


def test_index_page_shows_snapshots_versions_and_skipped_reasons(engine, ingested, monkeypatch):
    monkeypatch.delenv("GROUNDING_UI_USER", raising=False)
    at = page("pages/2_Index.py")
    overview = at.dataframe[0].value
    assert ingested in overview["repository"].tolist()
    assert f"{ingested}-other" in overview["repository"].tolist()
    at.selectbox(key="index_repo").set_value(ingested).run()
    assert not at.exception, at.exception
    assert at.subheader[0].value == ingested
    tables = [d.value for d in at.dataframe]
    snapshots = next(t for t in tables if "snapshot" in t.columns and "files seen" in t.columns)
    assert snapshots["status"].tolist() == ["complete (current)"]
    versions = next(t for t in tables if "vectors" in t.columns)
    assert versions["status"].tolist() == ["active"] and versions["encoder"].tolist() == ["hashing-64"]
    assert versions["vectors"].iloc[0] > 100
    reasons = next(t for t in tables if list(t.columns) == ["reason", "files"])
    assert "binary" in reasons["reason"].tolist()
    skipped = next(t for t in tables if list(t.columns) == ["path", "reason"])
    assert "logo.bin" in skipped["path"].tolist()
    by_role = next(t for t in tables if list(t.columns) == ["role", "files"])
    files = next(t for t in tables if list(t.columns) == ["path", "role", "language", "chunks"])
    assert dict(zip(by_role["role"], by_role["files"])) == files["role"].value_counts().to_dict()
    assert files.set_index("path").loc["sessions.py", "role"] == "source" and files["chunks"].sum() > 100


def charts(at: AppTest) -> dict[str, int]:
    """Title -> number of data rows, of every Altair chart on the page."""
    import pyarrow as pa

    found = {}
    for chart in at.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        rows = sum(pa.ipc.open_stream(d.data.data).read_all().num_rows for d in chart.proto.datasets)
        found[spec.get("title")] = rows
    return found


def test_training_page_plots_stored_runs_and_lists_evaluations(engine, ingested, monkeypatch):
    from grounding.evaluation.metrics import EvalResult, record_run
    from grounding.training.runs import MetricsLog, start_run, update_run

    monkeypatch.delenv("GROUNDING_UI_USER", raising=False)
    realm = start_run(ingested, kind="realm", config={"steps": 5}, device="cpu")
    log = MetricsLog(realm, "finetune")
    for step in range(1, 6):
        log.log(step, loss=2.0 / step, batch_mrr=0.1 * step)
    log.flush()
    heldout = {
        "active_hybrid": {"recall@1": 0.2, "mrr@10": 0.30},
        "candidate_hybrid": {"recall@1": 0.25, "mrr@10": 0.34},
        "active_vector": {"recall@1": 0.1, "mrr@10": 0.20},
        "candidate_vector": {"recall@1": 0.15, "mrr@10": 0.26},
    }
    update_run(
        realm, status="complete", decision="promoted", reason="beats", metrics={"heldout": heldout}, finished=True
    )
    retro = start_run(ingested, kind="retro", config={"steps": 4}, device="cpu")
    for stage in ("retro", "baseline"):
        log = MetricsLog(retro, stage)
        for step in range(1, 5):
            log.log(step, loss=5.0 - step)
        log.flush()
    bpb = {"retro_retrieval": 1.1, "retro_no_retrieval": 1.4, "baseline": 1.5, "retro_retrieval_low_overlap": 1.3}
    update_run(retro, status="complete", metrics={"bits_per_byte": bpb}, finished=True)
    reranker = start_run(ingested, kind="reranker", config={"steps": 3}, device="cpu")
    log = MetricsLog(reranker, "reranker")
    for step in range(1, 4):
        log.log(step, loss=1.4 - 0.2 * step, group_accuracy=0.25 * step)
    log.flush()
    reranked = {"hybrid": {"mrr@10": 0.30}, "hybrid+candidate": {"mrr@10": 0.41}}
    update_run(reranker, status="complete", decision="promoted", metrics={"heldout": reranked}, finished=True)
    metrics = {"recall@1": 0.2, "recall@5": 0.5, "recall@10": 0.6, "mrr@10": 0.31}
    record_run(
        ingested,
        EvalResult(ingested, "hybrid", 10, (1, None), metrics, index_version=None, encoder="hashing-64"),
        dataset="docstrings",
        split="heldout",
    )

    at = page("pages/3_Training.py")
    at.selectbox(key="training_repo").set_value(ingested).run()
    assert not at.exception, at.exception
    runs = at.dataframe[0].value
    assert runs["run"].tolist()[:3] == [reranker, retro, realm]
    plotted = charts(at)
    assert plotted.get("REALM: loss per step") == 5
    assert plotted.get("Held-out mrr@10: active vs candidate (hybrid)") == 2
    assert plotted.get("RETRO: loss per step") == 8, "retro and baseline stages"
    assert plotted.get("Held-out bits per byte (all); lower is better") == 3, "retrieval on, off, baseline"
    assert plotted.get("Reranker: loss per step") == 3
    assert plotted.get("Held-out mrr@10: hybrid, then reranked") == 2
    evaluations = at.dataframe[-1].value
    assert evaluations["mrr@10"].tolist() == [0.31] and evaluations["dataset"].tolist() == ["docstrings"]

    at.selectbox(key="realm_metric").set_value("batch_mrr").run()  # another per-step metric
    assert not at.exception, at.exception
    assert charts(at).get("REALM: batch_mrr per step") == 5


def test_ingest_page_runs_the_flow_and_reports_completion(engine, repo_name, tmp_path, monkeypatch, prefect_server):
    import ingest_jobs

    monkeypatch.delenv("GROUNDING_UI_USER", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # no deployment to submit to: the flow runs here
    monkeypatch.setenv("GROUNDING_ENCODER", "hashing-64")
    monkeypatch.setenv("GROUNDING_WRITE_BATCH_FILES", "2")  # several batches: several progress reports
    reset_settings()
    src = tmp_path / "tiny"
    src.mkdir()
    for i in range(5):
        (src / f"mod{i}.py").write_text(f"def function_{i}(x):\n    return x + {i}\n")
    (src / "blob.bin").write_bytes(b"\0\1\2")

    at = page("pages/1_Ingest.py")
    assert any("in this server" in c.value for c in at.caption)
    at.text_input[0].input(str(src))
    at.text_input[1].input(repo_name)
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    job = ingest_jobs.job(at.session_state["ingest_job"])
    assert job is not None and job.mode == "direct"
    deadline = time.monotonic() + 300
    while not job.finished:
        assert time.monotonic() < deadline, f"the ingest did not finish: {job}"
        time.sleep(1)
        at.run()
    at.run()
    assert not at.exception, at.exception
    assert job.status == "complete", job.error
    assert (job.done, job.total) == (5, 5), "the flow reported its progress through the hook"
    assert any(f"Ingest of **{repo_name}** complete" in s.value for s in at.success)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["files seen"] == "6" and metrics["chunks added"] == "5" and metrics["skipped"] == "1"
    reasons = next(d.value for d in at.dataframe if list(d.value.columns) == ["reason", "files"])
    assert reasons.to_dict("records") == [{"reason": "binary", "files": 1}]
    assert job.summary["repo"] == repo_name and job.summary["skipped"] == {"binary": 1}
