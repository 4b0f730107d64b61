"""Routing strategies end to end on real DuckDB files: a simulated world where one model doubles
replies, another is five times cheaper per reply and a third is the fastest; the measurements in
SQL (model_choice_stats), the published snapshot, and choose_model picking each by its strategy;
the asset through Dagster; and, on many simulated worlds, that the pessimistic bound does not pick
a model with little data on luck (where the point estimate does)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from flywheel_pipeline.core.catalog import load_catalog
from flywheel_pipeline.core.costs import SavingsConfig
from flywheel_pipeline.core.model_choice import (DEFAULT_ALPHA, Candidate, ChoiceError, Constraints, Measured, choose,
                                                 quality_bounds)
from flywheel_pipeline.core.model_snapshot import build_snapshot, candidates
from flywheel_pipeline.defs.learn.costs import cost_analysis
from flywheel_pipeline.defs.learn.model_choice import model_choice_stats
from flywheel_pipeline.defs.resources import MlflowResource, WarehouseResource
from flywheel_pipeline.routing import choose_model, load_model_stats
from flywheel_pipeline.warehouse.cost_analysis import build_cost_analysis, registry_models
from flywheel_pipeline.warehouse.label_layout import FLAG
from flywheel_pipeline.warehouse.model_stats import build_model_choice_stats, stats_rows, task_tokens
from flywheel_pipeline.warehouse.schema import connect

DOUBLES = "gpt-4o"  # replies 20% vs 10%, the most expensive
CHEAP = "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"  # 10% replies at a fifth of the cost per reply
FAST = "gpt-4o-mini"  # 10% replies, the fastest
# model: (reply rate, cost per message USD, median latency ms)
WORLD = {DOUBLES: (0.20, 0.0100, 2600.0), FAST: (0.10, 0.0040, 600.0), CHEAP: (0.10, 0.0008, 1300.0)}


def plant_world(con, world=WORLD, per_model: int = 4000, seed: int = 11, task: str = "follow_up",
                orgs=("org_a", "org_b"), start_key: int = 1) -> None:
    """Mature, delivered messages per model with Bernoulli replies (half of them positive), the
    given cost per message and a latency around the median; straight into messages and packed_labels."""
    rng = np.random.default_rng(seed)
    t0 = datetime(2026, 9, 1, 9)
    rows, labels = [], []
    key = start_key
    for model_id, (rate, cost, latency) in world.items():
        replied = rng.random(per_model) < rate
        positive = replied & (rng.random(per_model) < 0.5)
        lat = rng.normal(latency, latency * 0.1, per_model).clip(50)
        for i in range(per_model):
            sent = t0 + timedelta(minutes=key)
            rows.append({"message_id": f"m{key}", "message_key": key, "organization_id": orgs[i % len(orgs)],
                         "lead_id": f"lead-{key}", "sent_at": sent, "model_id": model_id, "task_type": task,
                         "prompt_tokens": 300, "completion_tokens": 200, "cost_usd": cost, "latency_ms": float(lat[i]),
                         "source_file": "world", "line_no": key, "batch_id": 1})
            flags = FLAG["delivered"] | (FLAG["replied"] if replied[i] else 0) | (
                FLAG["positive_reply"] if positive[i] else 0)
            labels.append({"message_key": key, "sent_at": sent, "flags": flags, "is_mature": True})
            key += 1
    con.register("_world_messages", pd.DataFrame(rows))
    con.register("_world_labels", pd.DataFrame(labels))
    con.execute("INSERT INTO messages BY NAME SELECT * FROM _world_messages")
    con.execute("INSERT INTO packed_labels BY NAME SELECT * FROM _world_labels")
    con.unregister("_world_messages")
    con.unregister("_world_labels")


def measure(con) -> dict:
    build_cost_analysis(con, load_catalog().with_registry(registry_models(con)), SavingsConfig())
    build_model_choice_stats(con)
    return build_snapshot(stats_rows(con), generated_at="2026-12-03T00:00:00Z", registry_models=registry_models(con),
                          tokens=task_tokens(con))


def test_each_strategy_picks_the_model_the_world_makes_best_for_it(tmp_path):
    con = connect(tmp_path / "wh.duckdb")
    plant_world(con)
    snapshot = measure(con)
    con.close()
    pooled = snapshot["models"]["*"]["follow_up"]
    assert pooled[DOUBLES]["mature_messages"] == 4000 and pooled[DOUBLES]["quality_low"] > 0.18
    assert pooled[CHEAP]["cost_per_message"] == pytest.approx(0.0008)
    assert pooled[FAST]["latency_ms_p50"] == pytest.approx(600, rel=0.05)
    # every organization's own rows, and task type 'all'
    assert snapshot["models"]["org_a"]["follow_up"][DOUBLES]["mature_messages"] == 2000
    assert snapshot["models"]["*"]["all"][CHEAP]["mature_messages"] == 4000
    table = {"families": {}}
    three = [DOUBLES, CHEAP, FAST]
    for given in (three, None):  # the three, and every catalog model for follow_up (the others unmeasured)
        pick = {s: choose_model("lead-1", "org_a", "follow_up", table=table, strategy=s, candidates=given,
                                snapshot=snapshot) for s in ("best_quality", "best_cost", "fastest", "balanced")}
        assert pick["best_quality"]["model_id"] == DOUBLES
        assert pick["best_cost"]["model_id"] == CHEAP
        assert pick["fastest"]["model_id"] == FAST
        assert pick["balanced"]["model_id"] == DOUBLES  # nobody else is within 10% of its quality
        assert pick["best_cost"]["source"] == "strategy" and pick["best_cost"]["experiment_id"] is None
        assert "lowest pessimistic cost per positive outcome" in pick["best_cost"]["reasons"][0]
        assert "measured median" in " ".join(pick["fastest"]["reasons"])
        # the fallback chain: another provider first
        assert pick["best_quality"]["fallback"][0] == CHEAP
    # constraints: a latency cap leaves the fast and cheap ones; best_quality then takes the better bound
    capped = choose_model("lead-1", "org_a", "follow_up", table=table, strategy="best_quality", candidates=three,
                          constraints=Constraints(max_latency_ms=2000), snapshot=snapshot)
    assert capped["model_id"] in (CHEAP, FAST) and any("excluded" in r and DOUBLES in r for r in capped["reasons"])
    with pytest.raises(ChoiceError) as nothing:
        choose_model("lead-1", "org_a", "follow_up", table=table, strategy="best_cost", candidates=three,
                     constraints=Constraints(max_latency_ms=500), snapshot=snapshot)
    assert nothing.value.code == "unsatisfiable" and nothing.value.closest == FAST
    # an experiment running for the lead's family wins over the strategy (sticky arm)
    table = {"families": {"flywheel-org_a-follow_up": {
        "experiment_id": "exp-1", "organization_id": "org_a", "task_type": "follow_up",
        "arms": [{"model_id": "gpt-4.1-mini", "version": "1.0.0", "ab_group": "challenger", "traffic_pct": 50.0},
                 {"model_id": FAST, "version": "1.0.0", "ab_group": "champion", "traffic_pct": 50.0}]}}}
    arms = {choose_model(f"lead-{i}", "org_a", "follow_up", table=table, strategy="best_cost", snapshot=snapshot)
            ["model_id"] for i in range(40)}
    assert arms == {"gpt-4.1-mini", FAST}
    again = choose_model("lead-7", "org_a", "follow_up", table=table, strategy="best_cost", snapshot=snapshot)
    assert again["model_id"] == choose_model("lead-7", "org_a", "follow_up", table=table, strategy="best_quality",
                                             snapshot=snapshot)["model_id"]  # sticky whatever the strategy
    assert again["source"] == "experiment" and again["experiment_id"] == "exp-1"
    assert again["reasons"][0].startswith("an experiment is running for flywheel-org_a-follow_up")
    assert f"best_cost would pick {CHEAP}" in again["reasons"][1]
    assert again["model_id"] not in again["fallback"]
    # another organization has no experiment: the strategy decides
    assert choose_model("lead-7", "org_b", "follow_up", table=table, strategy="best_cost",
                        snapshot=snapshot)["model_id"] == CHEAP


def test_the_organizations_own_measurements_win_once_it_has_enough(tmp_path):
    """org_b alone sees the cheap model reply at 30% (5,000 messages): for org_b best_quality picks
    it; org_a (with too few of its own messages) follows every organization's pooled figures."""
    con = connect(tmp_path / "wh.duckdb")
    plant_world(con, per_model=4000)
    plant_world(con, {CHEAP: (0.30, 0.0008, 1300.0)}, per_model=5000, seed=3, orgs=("org_b",), start_key=100_000)
    plant_world(con, {DOUBLES: (0.20, 0.0100, 2600.0)}, per_model=150, seed=4, orgs=("org_c",), start_key=200_000)
    snapshot = measure(con)
    con.close()
    table = {"families": {}}
    b = choose_model("l", "org_b", "follow_up", table=table, strategy="best_quality", candidates=[DOUBLES, CHEAP],
                     snapshot=snapshot)
    assert b["model_id"] == CHEAP and "mature messages of org_b" in b["reasons"][0]
    c = choose_model("l", "org_c", "follow_up", table=table, strategy="best_quality", candidates=[DOUBLES, CHEAP],
                     snapshot=snapshot)
    assert "every organization" in c["reasons"][0]


def _candidate(model_id: str, n: int, replies: int, provider: str = "openai", alpha: float = DEFAULT_ALPHA) -> Candidate:
    quality, low, high = quality_bounds("reply_rate", n, replies, 0.0, 0.0, alpha)
    return Candidate(model_id, provider, 0.001, 1000, 128000, ("chat",),
                     Measured("*", n, quality, low, high, n, 0.001, n, 1000.0, 1500.0))


def test_a_model_with_little_data_is_rarely_picked_on_luck():
    """2,000 simulated worlds: an incumbent with 3,000 messages and a newcomer with 60, both truly
    at 10% replies. Ranking by the point estimate picks the newcomer in about half of them (48.9%);
    by the one-sided 95% lower bound in about 1 of 10 (11.4%: a lower bound against a lower bound is
    not a 5% test, docs/routing.md), which is why the default is the 99% bound: 4.3%. A newcomer
    that is truly twice as good is found (at the default) once it has 1,500 messages."""
    rng = np.random.default_rng(2026)
    worlds = 2000
    picks = {"point": 0, 0.05: 0, 0.01: 0}
    for _ in range(worlds):
        inc_replies, new_replies = int(rng.binomial(3000, 0.10)), int(rng.binomial(60, 0.10))
        for alpha in (0.05, 0.01):
            incumbent = _candidate("incumbent", 3000, inc_replies, alpha=alpha)
            newcomer = _candidate("newcomer", 60, new_replies, provider="together", alpha=alpha)
            picks[alpha] += choose([incumbent, newcomer], "best_quality").model_id == "newcomer"
        picks["point"] += new_replies / 60 > inc_replies / 3000
    share = {k: v / worlds for k, v in picks.items()}
    assert share["point"] > 0.3
    assert share[0.05] <= 0.15 and share[0.05] < share["point"] / 3
    assert share[0.01] <= 0.06
    found = 0
    for _ in range(200):
        incumbent = _candidate("incumbent", 3000, int(rng.binomial(3000, 0.10)))
        newcomer = _candidate("newcomer", 1500, int(rng.binomial(1500, 0.20)), provider="together")
        found += choose([incumbent, newcomer], "best_quality").model_id == "newcomer"
    assert found >= 195


def test_bad_input_says_what_is_wrong_and_the_closest_model():
    catalog = load_catalog()
    snapshot = build_snapshot((), generated_at="")
    with pytest.raises(ChoiceError) as exc:
        candidates(catalog, snapshot, "org", "cold_email", ["gpt-4o", "gpt-4o-mni"])
    assert exc.value.code == "unknown_model" and exc.value.closest == "gpt-4o-mini"
    with pytest.raises(ChoiceError) as exc:
        candidates(catalog, snapshot, "org", "cold_email", [])
    assert exc.value.code == "no_candidates"
    with pytest.raises(ChoiceError) as exc:
        candidates(catalog, snapshot, "org", "astrology")
    assert exc.value.code == "no_candidates" and "astrology" in exc.value.detail
    some = candidates(catalog, snapshot, "org", "cold_email")
    with pytest.raises(ChoiceError) as exc:
        choose(some, "cheapest")
    assert exc.value.code == "unknown_strategy" and "best_cost" in exc.value.detail
    with pytest.raises(ChoiceError) as exc:
        choose(some, "fastest", Constraints(capabilities=("vision",), min_context_window=2_000_000))
    assert exc.value.code == "unsatisfiable" and exc.value.closest in ("gpt-4.1", "gpt-4.1-mini",
                                                                         "gpt-4.1-mini-2025-04-14")
    assert "context window" in exc.value.detail
    # nothing measured: best_quality cannot prefer anyone on outcomes, the reasons say so
    pick = choose(some, "best_quality", Constraints(capabilities=("vision",)))
    assert any("no measured outcomes" in r for r in pick.reasons)
    # fallback: a different provider first
    pick = choose(some, "best_cost")
    providers = [catalog.get(m).provider for m in pick.fallback]
    assert providers[0] != catalog.get(pick.model_id).provider and len(set(providers[:2])) == 2


def test_model_choice_stats_materializes_and_publishes_the_snapshot(tmp_path, home):
    con = connect(tmp_path / "wh.duckdb")
    plant_world(con, per_model=400)
    con.close()
    res = {"warehouse": WarehouseResource(database=str(tmp_path / "wh.duckdb")),
           "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")}
    with dg.instance_for_test() as instance:
        result = dg.materialize([cost_analysis, model_choice_stats], instance=instance, resources=res)
        assert result.success
        meta = result.asset_materializations_for_node("model_choice_stats")[0].metadata
    assert meta["organizations"].value == 2 and "reply_rate [lower, upper]" in meta["every_organization"].value
    published = json.loads((home / "model_stats.json").read_text())
    assert published == load_model_stats()
    assert published["quality_metric"] == "reply_rate" and published["generated_at"]
    assert len(published["executions"]["org_a"]) == 200  # the newest per organization
    assert published["executions"]["org_a"][0]["sent_at"] >= published["executions"]["org_a"][-1]["sent_at"]
    assert {r["model_id"] for r in published["costs"]["org_b"]} == set(WORLD)
    ro = connect(tmp_path / "wh.duckdb", read_only=True)
    assert ro.execute("SELECT count(*) FROM model_choice_stats WHERE organization_id = '*' AND task_type = 'all'"
                      ).fetchone()[0] == 3
    ro.close()
    # the routing API reads the published file by itself
    assert choose_model("lead-1", "org_a", "follow_up", table={"families": {}}, strategy="best_cost",
                        candidates=list(WORLD))["model_id"] == CHEAP
