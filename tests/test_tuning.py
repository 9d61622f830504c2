"""Fusion weights chosen per index version on the repository's own harvested questions, stored and then used."""

from __future__ import annotations

import sqlalchemy as sa

from grounding import store
from grounding.search.fusion import DEFAULT_WEIGHTS, FusionWeights
from grounding.search.retrieve import hybrid_weights


def test_tune_fusion_stores_the_choice_with_the_index_version_and_search_uses_it(
    engine, repo_name, hashing, tmp_path, monkeypatch
):
    from grounding.evaluation.tuning import tune_fusion
    from grounding.index.ingest import ingest
    from grounding.search.retrieve import search
    from tests.conftest import copy_tree

    ingest(str(copy_tree("requests", tmp_path / "requests")), name=repo_name, embedder=hashing)
    with engine.connect() as conn:
        before = store.active_index_version(conn, store.repo_id(conn, repo_name))
    assert before.fusion_weights is None and hybrid_weights("auto", before) == FusionWeights.parse(DEFAULT_WEIGHTS)

    choice = tune_fusion(repo_name)
    assert choice.stored and choice.questions >= 20 and choice.index_version == before.id
    assert choice.table[str(choice.best)] == max(choice.table.values())
    # The grid's best replaces the defaults only when its gain's interval is above 0.
    assert choice.weights == (choice.best if choice.gain[1] > 0 else FusionWeights.parse(DEFAULT_WEIGHTS))
    with engine.connect() as conn:
        after = store.active_index_version(conn, store.repo_id(conn, repo_name))
        stored = store.fusion_choice(conn, after.id)
    assert after.fusion_weights == str(choice.weights) and stored["harvester"] == "docstrings"
    assert stored["best"] == str(choice.best) and len(stored["gain_over_defaults"]) == 3
    assert hybrid_weights("auto", after) == choice.weights
    assert hybrid_weights("vector=1,lexical=0,trigram=0", after) == FusionWeights(1, 0, 0), "an explicit setting wins"

    # Search fuses by the stored weights: forcing the same weights by hand gives the same ranking.
    question = "how are cookies merged into the request"
    auto = [(h.citation.path, h.citation.start_line) for h in search(repo_name, question, k=8)]
    monkeypatch.setenv("GROUNDING_FUSION_WEIGHTS", str(choice.weights))
    from grounding.config import reset_settings

    reset_settings()
    assert [(h.citation.path, h.citation.start_line) for h in search(repo_name, question, k=8)] == auto
    # A version with other weights stored ranks by those instead.
    other = (
        "vector=0,lexical=1,trigram=0"
        if str(choice.weights) != "vector=0,lexical=1,trigram=0"
        else "vector=1,lexical=0,trigram=0"
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE index_versions SET fusion = jsonb_set(fusion, '{weights}', to_jsonb(CAST(:w AS text))) "
                "WHERE id = :v"
            ),
            {"w": other, "v": after.id},
        )
    monkeypatch.setenv("GROUNDING_FUSION_WEIGHTS", "auto")
    reset_settings()
    stored_other = [(h.citation.path, h.citation.start_line) for h in search(repo_name, question, k=8)]
    monkeypatch.setenv("GROUNDING_FUSION_WEIGHTS", other)
    reset_settings()
    assert [(h.citation.path, h.citation.start_line) for h in search(repo_name, question, k=8)] == stored_other


def test_an_eval_index_is_searched_by_its_parents_weights(engine, repo_name, hashing, tmp_path, monkeypatch):
    from grounding.config import reset_settings
    from grounding.evaluation.eval_index import eval_index_name
    from grounding.evaluation.tuning import tune_fusion
    from grounding.index.ingest import ingest
    from grounding.search.retrieve import search
    from tests.conftest import copy_tree

    ingest(str(copy_tree("requests", tmp_path / "requests")), name=repo_name, embedder=hashing)
    tune_fusion(repo_name)
    derived = eval_index_name(repo_name, "docstrings")
    with engine.begin() as conn:  # the parent's choice, set to something the defaults are not
        conn.execute(
            sa.text("UPDATE index_versions SET fusion = CAST(:f AS jsonb) WHERE repo_id = :r AND status = 'active'"),
            {"f": '{"weights": "vector=0,lexical=1,trigram=0"}', "r": store.repo_id(conn, repo_name)},
        )
    question = "how are cookies merged into the request"
    inherited = [(h.citation.path, h.citation.start_line) for h in search(derived, question, k=8)]
    monkeypatch.setenv("GROUNDING_FUSION_WEIGHTS", "vector=0,lexical=1,trigram=0")
    reset_settings()
    assert [(h.citation.path, h.citation.start_line) for h in search(derived, question, k=8)] == inherited
    monkeypatch.setenv("GROUNDING_FUSION_WEIGHTS", DEFAULT_WEIGHTS)
    reset_settings()
    assert [(h.citation.path, h.citation.start_line) for h in search(derived, question, k=8)] != inherited


def test_tuned_weights_replace_defaults_that_clearly_lose(engine, repo_name, hashing, tmp_path, monkeypatch):
    import sys

    from grounding.evaluation.tuning import tune_fusion
    from grounding.index.ingest import ingest
    from tests.conftest import copy_tree

    ingest(str(copy_tree("requests", tmp_path / "requests")), name=repo_name, embedder=hashing)
    # Defaults that rank by symbol-name fragments alone: a docstring question holds few, so they lose clearly.
    monkeypatch.setattr(sys.modules["grounding.evaluation.tuning"], "DEFAULT_WEIGHTS", "vector=0,lexical=0,trigram=1")
    choice = tune_fusion(repo_name)
    assert choice.gain[1] > 0 and choice.weights == choice.best != FusionWeights(0, 0, 1)
    assert "fuses by" in choice.describe()
