"""Training runs: loss per step (REALM, RETRO, reranker), bits per byte across RETRO runs, held-out MRR across
REALM runs (active against candidate) and reranker runs (without and with it), and the stored evaluations."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st
from ui_common import current_user, errors_as_messages, reads_errors, scope_or_stop, shown_encoder, when

from grounding.service.status import (
    REALM_KINDS,
    RERANKER_KINDS,
    RETRO_KINDS,
    bits_per_byte_rows,
    eval_history,
    eval_rows,
    heldout_mrr_rows,
    loss_rows,
    reranker_mrr_rows,
    training_history,
)

st.set_page_config(page_title="Training · grounding copilot", page_icon=":material/monitoring:", layout="wide")


def step_chart(histories, title: str, key: str) -> None:
    """Per-step curves of one family of runs, one line per run and stage; the metric is chosen."""
    names = sorted({m for h in histories for s in h.steps if s.stage != "eval" for m in s.metrics})
    if not names:
        st.caption(f"No per-step metrics of {title} runs yet.")
        return
    metric = st.selectbox("Per-step metric", names, index=names.index("loss") if "loss" in names else 0, key=key)
    rows = [r for r in loss_rows(histories, metric=metric) if r["stage"] != "eval"]
    chart = (
        alt.Chart(pd.DataFrame(rows), title=f"{title}: {metric} per step")
        .mark_line(point=len(rows) < 60)
        .encode(
            x=alt.X("step:Q"),
            y=alt.Y(f"{metric}:Q", scale=alt.Scale(zero=False)),
            color=alt.Color("series:N", title="run, stage"),
            tooltip=["run", "stage", "step", metric],
        )
    )
    st.altair_chart(chart, width="stretch")


def grouped_bars(
    rows: list[dict], *, title: str, group: str, groups: list[str], value: str, axis: str, tooltip: list[str]
) -> None:
    """One bar per run and `group` value (in the order of `groups`), coloured by group."""
    chart = (
        alt.Chart(pd.DataFrame(rows), title=title)
        .mark_bar()
        .encode(
            x=alt.X("run:O"),
            xOffset=alt.XOffset(f"{group}:N", sort=groups),
            y=alt.Y(f"{value}:Q", title=axis),
            color=alt.Color(f"{group}:N", scale=alt.Scale(domain=groups)),
            tooltip=tooltip,
        )
    )
    st.altair_chart(chart, width="stretch")


# First: with a login on, the sign-in form stops the page here. A run's error (its host, its paths) is shown
# in local trusted mode and to a signed-in admin; an evaluation's dataset path in local trusted mode only.
trusted = current_user() is None
errors_shown = reads_errors()
st.title("Training")
scope = scope_or_stop()
if not scope.repos:
    st.info(
        "No repository yet: ingest one, then train with `grounding train REPO`, `grounding train-reranker REPO` "
        "or `grounding train-retro REPO`."
    )
    st.stop()
repo = st.selectbox("Repository", scope.names, key="training_repo")


def gate_interval(metrics: dict | None) -> str:
    """The gate's held-out MRR gain and its paired bootstrap 95% interval, as the run recorded them."""
    g = (metrics or {}).get("gate")
    return f"{g['gain']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]" if g else ""


histories = []
with errors_as_messages("Reading the training runs"):
    histories = training_history(repo, limit=50)
runs = [h.run for h in histories]
realm = [h for h in histories if h.run.kind in REALM_KINDS]
retro = [h for h in histories if h.run.kind in RETRO_KINDS]
reranker = [h for h in histories if h.run.kind in RERANKER_KINDS]

if runs:
    st.dataframe(
        [
            {
                "run": r.id,
                "kind": r.kind,
                "status": r.status,
                "decision": r.decision or "",
                "reason": r.reason or ((r.error if errors_shown else "failed") if r.error else ""),
                "gain [95%]": gate_interval(r.metrics),
                "best step": (r.metrics or {}).get("finetune_best_step"),
                "device": r.device,
                "started": when(r.started_at),
                "finished": when(r.finished_at),
            }
            for r in runs
        ],
        hide_index=True,
    )
else:
    st.info(f"No training run of {repo} yet: `grounding train {repo}` (REALM) or `grounding train-retro {repo}`.")

left, right = st.columns(2)
with left:
    st.subheader("REALM retriever")
    step_chart(realm, "REALM", "realm_metric")
    mrr = heldout_mrr_rows(h.run for h in realm)
    if mrr:
        modes = sorted({r["mode"] for r in mrr})
        mode = st.radio(
            "Retrieval mode", modes, index=modes.index("hybrid") if "hybrid" in modes else 0, horizontal=True
        )
        shown = [r for r in mrr if r["mode"] == mode]
        grouped_bars(
            shown,
            title=f"Held-out {shown[0]['metric']}: active vs candidate ({mode})",
            group="version",
            groups=["active", "candidate"],
            value="mrr",
            axis=shown[0]["metric"],
            tooltip=["run", "version", "mrr", "decision"],
        )
    elif realm:
        st.caption("No held-out MRR stored yet (runs still going, or failed before the gate).")

with right:
    st.subheader("RETRO")
    step_chart(retro, "RETRO", "retro_metric")
    bpb = bits_per_byte_rows(h.run for h in retro)
    if bpb:
        subset = st.radio("Held-out text", ["all", "low overlap"], horizontal=True, key="bpb_subset")
        grouped_bars(
            [r for r in bpb if r["subset"] == subset],
            title=f"Held-out bits per byte ({subset}); lower is better",
            group="retrieval",
            groups=["on", "off", "baseline"],
            value="bits_per_byte",
            axis="bits per byte",
            tooltip=["run", "kind", "setting", "bits_per_byte"],
        )
    elif retro:
        st.caption("No bits per byte stored yet (runs still going, or failed before evaluation).")

if reranker:
    st.subheader("Reranker")
    left, right = st.columns(2)
    with left:
        step_chart(reranker, "Reranker", "reranker_metric")
    with right:
        mrr = reranker_mrr_rows(h.run for h in reranker)
        if mrr:
            grouped_bars(
                mrr,
                title=f"Held-out {mrr[0]['metric']}: hybrid, then reranked",
                group="ranking",
                groups=["hybrid", "promoted reranker", "new reranker"],
                value="mrr",
                axis=mrr[0]["metric"],
                tooltip=["run", "ranking", "mrr", "decision"],
            )
        else:
            st.caption("No held-out MRR stored yet (runs still going, or failed before the gate).")

st.subheader("Evaluations")
with errors_as_messages("Reading the evaluations"):
    evaluations = eval_rows(eval_history(repo))
    if evaluations:
        for row in evaluations:
            row["when"] = when(row["when"])
            row["encoder"] = shown_encoder(row["encoder"])
            if not trusted and row["dataset"]:
                row["dataset"] = row["dataset"].rstrip("/").rsplit("/", 1)[-1]  # a question file's path
        st.dataframe(evaluations, hide_index=True)
    else:
        st.caption(f"No evaluation of {repo} stored yet: `grounding eval {repo}`.")
