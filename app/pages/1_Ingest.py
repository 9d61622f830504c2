"""Ingest a path or git URL through the `ingest-repo` flow, with live progress and the ingest's summary."""

from __future__ import annotations

import ingest_jobs
import streamlit as st
from ui_common import current_user, errors_as_messages, reads_errors, scope_or_stop, when

from grounding.index.ingest import default_name
from grounding.index.sources import is_git_url
from grounding.service.status import SnapshotView, skipped_files

st.set_page_config(page_title="Ingest · grounding copilot", page_icon=":material/download:", layout="wide")


def show_summary(name: str, snapshot: SnapshotView) -> None:
    stats = snapshot.stats
    at = f" at `{snapshot.commit[:12]}`" if snapshot.commit else ""
    took = f" in {snapshot.seconds:.1f}s" if snapshot.seconds is not None else ""
    st.success(f"Ingest of **{name}** complete: snapshot {snapshot.id}{at}{took}.")
    files = st.columns(5)
    for col, (label, key) in zip(
        files,
        (
            ("files seen", "files_seen"),
            ("changed", "files_changed"),
            ("unchanged", "files_unchanged"),
            ("deleted", "files_deleted"),
            ("skipped", "files_skipped"),
        ),
    ):
        col.metric(label, stats.get(key, 0))
    chunks = st.columns(5)
    for col, (label, key) in zip(
        chunks,
        (
            ("chunks added", "chunks_added"),
            ("removed", "chunks_removed"),
            ("unchanged", "chunks_unchanged"),
            ("embedded", "embeddings_computed"),
            ("vectors reused", "embeddings_reused"),
        ),
    ):
        col.metric(label, stats.get(key, 0))
    skipped = skipped_files(name, snapshot_id=snapshot.id)
    if skipped.by_reason:
        st.markdown("**Skipped files by reason**")
        st.dataframe([{"reason": r, "files": n} for r, n in skipped.by_reason.items()], hide_index=True)
        with st.expander(f"The {skipped.total} skipped files"):
            st.dataframe([{"path": s.path, "reason": s.reason} for s in skipped.files], hide_index=True)
    if stats.get("non_utf8"):
        st.caption("Not UTF-8 (decoded with replacement): " + ", ".join(f"`{p}`" for p in stats["non_utf8"][:20]))


def show_job(key: str) -> None:
    job = ingest_jobs.job(key)
    if job is None:
        return
    how = f"Prefect deployment `{ingest_jobs.DEPLOYMENT}`" if job.mode == "deployment" else "the flow, in this server"
    trusted = user is None  # sources and errors name server paths: local trusted mode's, as in the API
    st.subheader(f"{job.name} ← `{job.source}`" + (f" @ `{job.ref}`" if job.ref else "") if trusted else job.name)
    st.caption(f"Through {how}" + (f", flow run `{job.flow_run_id}`" if job.flow_run_id else ""))
    if not job.finished:
        if job.fraction is not None:
            text = f"{job.stage}: {job.done}/{job.total} changed files written"
        elif job.mode == "deployment" and job.snapshot is not None:
            text = f"{job.stage}: {job.done} files written by snapshot {job.snapshot.id} (flow {job.flow_state})"
        else:
            text = f"{job.stage}" + (f" (flow {job.flow_state})" if job.flow_state else "") + "…"
        st.progress(job.fraction or 0.0, text=text)
    elif job.status == "failed":
        why = f": {job.error}" if reads_errors() else "; an administrator can read why"  # as the API's
        st.error(f"Ingest of {job.name} failed{why}. The previous snapshot stays active.")
    elif job.snapshot is not None:
        st.progress(1.0, text="done")
        show_summary(job.name, job.snapshot)
    if job.finished and st.session_state.get("ingest_polling") == key:
        del st.session_state["ingest_polling"]
        st.rerun()  # the whole page, once, so that polling stops


user = current_user()  # first: with a login on, the sign-in form stops the page here
st.title("Ingest a repository")
scope = scope_or_stop()
use_deployment = ingest_jobs.deployment_available()
if use_deployment:
    st.caption(f"Runs on a Prefect worker: deployment `{ingest_jobs.DEPLOYMENT}` at {ingest_jobs.prefect_api()}.")
else:
    st.caption(
        "Runs the `ingest-repo` flow in this server (no Prefect API with that deployment; "
        "start `grounding serve` and set PREFECT_API_URL to use its workers)."
    )

submitted = False
if user is None:
    with st.form("ingest"):
        source = st.text_input("Source", placeholder="/path/to/a/checkout or https://git.example.com/acme/api.git")
        name = st.text_input("Name", placeholder="default: the source's last path segment")
        ref = st.text_input("Ref", placeholder="branch, tag or commit (git URLs)")
        replace = st.checkbox("Read an existing repository from this new source from now on")
        submitted = st.form_submit_button("Ingest", type="primary")
elif scope.repos:
    # A user re-ingests what they may read, from where it is registered; an administrator adds or re-points.
    st.caption(
        "Re-ingest a repository you may read from its registered source. "
        "New repositories are added by an administrator."
    )
    with st.form("ingest"):
        by_name = {r.name: r for r in scope.repos}
        name = st.selectbox("Repository", list(by_name))
        source, ref, replace = "", "", False
        submitted = st.form_submit_button("Re-ingest", type="primary")
    if submitted:
        chosen = by_name[name]
        source, ref = chosen.source, (chosen.ref or "") if is_git_url(chosen.source) else ""
else:
    st.info(f"{user!r} may read no repository yet, so there is nothing to re-ingest.")

if submitted:
    source, name, ref = source.strip(), name.strip(), ref.strip() or None
    if not source:
        st.error("Give a directory or a git URL to ingest.")
    else:
        name = name or default_name(source)
        if user is not None and name not in scope.names:
            st.error(f"{user!r} may not ingest into {name!r}: only repositories you may read can be ingested.")
        else:
            with errors_as_messages("Starting the ingest"):
                started = ingest_jobs.start(
                    source, name=name, ref=ref, use_deployment=use_deployment, user=user, replace_source=replace
                )
                st.session_state["ingest_job"] = st.session_state["ingest_polling"] = started.key

key = st.session_state.get("ingest_job")
current = ingest_jobs.job(key) if key else None
if current is not None:
    st.fragment(run_every=None if current.finished else ingest_jobs.POLL_SECONDS)(show_job)(key)

others = [j for j in ingest_jobs.running_jobs() if j.key != key and (user is None or j.name in scope.names)]
if others:
    st.markdown("**Other ingests running here**")
    st.dataframe(
        [
            {"repository": j.name, **({"source": j.source} if user is None else {}), "stage": j.stage, "mode": j.mode}
            for j in others
        ],
        hide_index=True,
    )

with st.expander("Repositories and their current snapshots"):
    st.dataframe(
        [
            {
                "repository": r.name,
                "snapshot": r.snapshot_id,
                "commit": (r.commit or "")[:12],
                "files": r.files,
                "chunks": r.chunks,
                "finished": when(r.snapshot_finished_at),
                "last run": r.last_status,
            }
            for r in scope.repos
        ],
        hide_index=True,
    )
