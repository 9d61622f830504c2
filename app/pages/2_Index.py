"""The index of each repository: freshness, counts, snapshots, index versions, file roles and the files it skipped."""

from __future__ import annotations

import streamlit as st
from ui_common import current_user, errors_as_messages, reads_errors, scope_or_stop, shown_encoder, when

from grounding.service.status import file_roles, index_versions, skipped_files, snapshots

st.set_page_config(page_title="Index · grounding copilot", page_icon=":material/database:", layout="wide")
# First: with a login on, the sign-in form stops the page here. Sources (server paths, URLs) are shown in
# local trusted mode only, as the API shows them to nobody; ingest and reindex errors (which may name them)
# there and to a signed-in admin, as the API shows them to admins.
trusted = current_user() is None
errors_shown = reads_errors()
st.title("Index")
scope = scope_or_stop()
if not scope.repos:
    st.info("No repository yet: ingest one on the Ingest page, or with `grounding ingest PATH`.")
    st.stop()

st.dataframe(
    [
        {
            "repository": r.name,
            "snapshot": r.snapshot_id,
            "commit": (r.commit or "")[:12],
            "files": r.files,
            "chunks": r.chunks,
            "index version": r.index_version,
            "encoder": shown_encoder(r.encoder),
            "fresh": r.freshness,
            "last run": r.last_status,
        }
        for r in scope.repos
    ],
    hide_index=True,
)

chosen = st.selectbox("Repository", scope.names, key="index_repo")
repo = next(r for r in scope.repos if r.name == chosen)
st.subheader(repo.name)
if trusted:
    st.caption(f"from `{repo.source}`" + (f" @ `{repo.ref}`" if repo.ref else ""))
cols = st.columns(5)
cols[0].metric("files", repo.files)
cols[1].metric("chunks", repo.chunks)
cols[2].metric("snapshot", repo.snapshot_id or "-", help=f"commit {repo.commit}" if repo.commit else None)
cols[3].metric("index version", repo.index_version or "-", help=shown_encoder(repo.encoder) or None)
cols[4].metric("last ingest", repo.freshness if repo.freshness in ("just now", "never") else f"{repo.freshness} ago")
if repo.last_status == "failed" and repo.last_error:
    why = f": {repo.last_error.splitlines()[0]}" if errors_shown else "; an administrator can read why"
    st.warning(f"The latest ingest failed (the previous snapshot still answers){why}")
elif repo.last_status == "running":
    st.info("An ingest of this repository is running.")

history, versions, roles, skipped = st.tabs(["Snapshots", "Index versions", "File roles", "Skipped files"])
with history, errors_as_messages("Reading the snapshots"):
    rows = []
    for s in snapshots(repo.name):
        stats = s.stats
        rows.append(
            {
                "snapshot": s.id,
                "status": s.status + (" (current)" if s.id == repo.snapshot_id else ""),
                "commit": (s.commit or "")[:12],
                "started": when(s.started_at),
                "seconds": round(s.seconds, 1) if s.seconds is not None else None,
                "files seen": stats.get("files_seen"),
                "changed": stats.get("files_changed"),
                "deleted": stats.get("files_deleted"),
                "skipped": s.skipped,
                "chunks added": stats.get("chunks_added"),
                "removed": stats.get("chunks_removed"),
                "embedded": stats.get("embeddings_computed"),
                "error": ((s.error.splitlines() or [""])[0] if errors_shown else "failed") if s.error else "",
            }
        )
    st.dataframe(rows, hide_index=True)

with versions, errors_as_messages("Reading the index versions"):
    st.dataframe(
        [
            {
                "version": v.id,
                "status": v.status,
                "encoder": shown_encoder(v.encoder),
                "query encoder": shown_encoder(v.query_encoder),
                "dim": v.dim,
                "vectors": v.vectors,
                "created": when(v.created_at),
                "activated": when(v.activated_at),
                "retired": when(v.retired_at),
                "note": (v.note or "") if errors_shown else "",  # a failed reindex's error text
            }
            for v in reversed(index_versions(repo.name))
        ],
        hide_index=True,
    )

with roles, errors_as_messages("Reading the file roles"):
    found_roles = file_roles(repo.name, limit=0)
    st.caption(
        "What each file is for. Answers cite implementation first unless a question asks for tests, docs or "
        "examples; `role:test` (or docs, example, ...) in a question keeps only that role."
    )
    st.dataframe([{"role": r, "files": n} for r, n in found_roles.by_role.items()], hide_index=True)
    role = st.selectbox("Show", ["every role", *found_roles.by_role], key="file_role")
    shown = file_roles(repo.name, role=None if role == "every role" else role).files
    if len(shown) == 1000:
        st.caption("The first 1,000 files by path.")
    st.dataframe(
        [{"path": path, "role": r, "language": language, "chunks": chunks} for path, r, language, chunks in shown],
        hide_index=True,
    )

with skipped, errors_as_messages("Reading the skipped files"):
    found = skipped_files(repo.name)
    if not found.by_reason:
        st.write("The current snapshot skipped no file.")
    else:
        st.markdown(f"Snapshot {found.snapshot_id} skipped {found.total} files:")
        st.dataframe([{"reason": r, "files": n} for r, n in found.by_reason.items()], hide_index=True)
        reason = st.selectbox("Show", ["every reason", *found.by_reason], key="skipped_reason")
        st.dataframe(
            [{"path": f.path, "reason": f.reason} for f in found.files if reason in ("every reason", f.reason)],
            hide_index=True,
        )
