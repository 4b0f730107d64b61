"""Deterministic traffic split, the routing table asset and the choose_model API."""

from __future__ import annotations

import json
from datetime import date

import dagster as dg
import pytest

from flywheel_pipeline.core.assignment import Arm, bucket, choose_arm, next_rollout_step
from flywheel_pipeline.simulator import SimConfig, simulate
from flywheel_pipeline.defs.resources import (ExportsResource, FineTuningResource, GenerationResource,
                                              JudgeResource, LabelPolicyResource, LandingZoneResource, MlflowResource,
                                              WarehouseResource)
from flywheel_pipeline.routing import choose_model, load_routing
from flywheel_pipeline_tests.domains import checks_of, only_assets_of

LEADS = [f"lead-{i}" for i in range(20_000)]


def arms(pct):
    return [Arm("challenger-model", "1.1.0", "challenger", pct), Arm("champion-model", "1.0.0", "champion", 100 - pct)]


def test_k_arm_split_is_sticky_and_proportional():
    """80/10/10, then both challengers at a third: each keeps its leads as its share grows."""
    def k_arms(pct):
        return [Arm("a", None, "challenger", pct), Arm("b", None, "challenger_2", pct),
                Arm("c", None, "champion", 100 - 2 * pct)]

    small = {lead: choose_arm(lead, "exp-k", k_arms(10)).ab_group for lead in LEADS}
    even = {lead: choose_arm(lead, "exp-k", k_arms(100 / 3)).ab_group for lead in LEADS}
    for groups, shares in ((small, (0.1, 0.1, 0.8)), (even, (1 / 3, 1 / 3, 1 / 3))):
        for group, share in zip(("challenger", "challenger_2", "champion"), shares, strict=True):
            assert abs(sum(g == group for g in groups.values()) / len(LEADS) - share) < 0.012
    for group in ("challenger", "challenger_2"):
        assert all(even[lead] == group for lead, g in small.items() if g == group)
    assert small == {lead: choose_arm(lead, "exp-k", k_arms(10)).ab_group for lead in LEADS}
    with pytest.raises(ValueError, match="at most"):
        choose_arm("lead", "exp-k", k_arms(40))


def test_split_is_sticky_proportional_and_monotone_when_the_share_grows():
    at10 = {lead: choose_arm(lead, "exp-1", arms(10)).ab_group for lead in LEADS}
    at50 = {lead: choose_arm(lead, "exp-1", arms(50)).ab_group for lead in LEADS}
    share10 = sum(g == "challenger" for g in at10.values()) / len(LEADS)
    share50 = sum(g == "challenger" for g in at50.values()) / len(LEADS)
    assert 0.09 < share10 < 0.11 and 0.48 < share50 < 0.52
    assert all(at50[lead] == "challenger" for lead, g in at10.items() if g == "challenger")
    assert at10 == {lead: choose_arm(lead, "exp-1", arms(10)).ab_group for lead in LEADS}  # deterministic
    other = {lead: choose_arm(lead, "exp-2", arms(10)).ab_group for lead in LEADS}
    assert other != at10  # a new experiment reshuffles
    assert 0 <= bucket("x", "y") < 100
    assert [next_rollout_step(p) for p in (0, 10, 50, 100)] == [10, 50, 100, 100]


def test_choose_model_falls_back_from_organization_and_task_to_global_and_default():
    table = {"default_model": "base", "families": {
        "flywheel-org-1-cold_email": {"experiment_id": "e1", "arms": [
            {"model_id": "org-model", "version": "1.0.0", "ab_group": "champion", "traffic_pct": 100.0}]},
        "flywheel-global-all": {"experiment_id": "e2", "arms": [
            {"model_id": "global-model", "version": "2.0.0", "ab_group": "champion", "traffic_pct": 100.0}]}}}
    assert choose_model("l", "org-1", "cold_email", table=table)["model_id"] == "org-model"
    assert choose_model("l", "org-2", "cold_email", table=table)["model_id"] == "global-model"
    assert choose_model("l", "org-1", "follow_up", table={**table, "families": {
        k: v for k, v in table["families"].items() if k != "flywheel-global-all"}})["model_id"] == "base"
    with pytest.raises(LookupError):
        choose_model("l", "org-9", "x", table={"families": {}})


def test_routing_table_asset_routes_ten_percent_to_the_evaluated_challenger(tmp_path, home):
    simulate(home / "landing", SimConfig(seed=8, days=40, end=date(2026, 4, 15), organizations=1,
                                         leads_per_org=150, messages_per_day=30))
    res = {"warehouse": WarehouseResource(database=str(home / "wh.duckdb")),
           "landing": LandingZoneResource(path=str(home / "landing")), "label_policy": LabelPolicyResource(),
           "exports": ExportsResource(path=str(home / "exports")), "fine_tuning": FineTuningResource(),
           "generation": GenerationResource(), "judge": JudgeResource(), "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path}/m.db")}
    with dg.instance_for_test() as instance:
        result = dg.materialize([*only_assets_of("ingest", "outcomes", "datasets", "training", "experiments"),
                                 *checks_of("datasets", "training")], instance=instance, resources=res)
        assert result.success
    table = json.loads((home / "routing.json").read_text())
    family = table["families"]["flywheel-global-all"]
    assert [(a["ab_group"], a["traffic_pct"]) for a in family["arms"]] == [("challenger", 10.0), ("champion", 90.0)]
    assert family["arms"][0]["model_id"].startswith("sandbox:")
    picks = [choose_model(f"lead-{i}", "org_01", "cold_email")["ab_group"] for i in range(5000)]
    assert 0.08 < picks.count("challenger") / 5000 < 0.12
    assert load_routing()["default_model"] == "gpt-4o-mini-2024-07-18"


def test_the_simulated_outreach_app_follows_the_routing_table(tmp_path):
    table = {"default_model": "base", "families": {"flywheel-global-all": {"experiment_id": "e", "arms": [
        {"model_id": "sandbox:base:supervised:abc", "version": "1.0.0", "ab_group": "challenger", "traffic_pct": 10.0},
        {"model_id": "gpt-4o-mini-2024-07-18", "version": None, "ab_group": "champion", "traffic_pct": 90.0}]}}}
    base = dict(seed=4, days=20, end=date(2026, 5, 1), organizations=1, leads_per_org=300, messages_per_day=100)
    plain, routed = tmp_path / "plain", tmp_path / "routed"
    simulate(plain, SimConfig(**base))
    simulate(routed, SimConfig(**base, routing_history=((date(2026, 4, 20), table),)))
    before = sorted((plain / "messages").glob("*2026-04-1*.jsonl"))
    assert before and all(p.read_bytes() == (routed / "messages" / p.name).read_bytes() for p in before)
    after = [json.loads(line) for p in sorted((routed / "messages").glob("*2026-04-2*.jsonl"))
             for line in p.read_text().splitlines()]
    groups = [m["ab_group"] for m in after]
    assert set(groups) == {"challenger", "champion"} and 0.06 < groups.count("challenger") / len(groups) < 0.14
    assert {m["model_id"] for m in after if m["ab_group"] == "challenger"} == {"sandbox:base:supervised:abc"}
    # the app records the exposure: experiment and allocation (arms and shares) with every routed message
    assert {m["metadata"]["allocation"] for m in after} == {"e@challenger=10/champion=90"}


def test_ab_test_results_from_routed_traffic(tmp_path, home):
    from datetime import datetime, timezone

    from flywheel_pipeline.defs.experiments.assets import ab_test_results
    from flywheel_pipeline.routing import write_routing
    from flywheel_pipeline.warehouse.experiments import arm_statistics
    from flywheel_pipeline.warehouse.schema import connect
    from flywheel_pipeline_tests.conftest import run_pipeline

    table = {"default_model": "gpt-4o-mini-2024-07-18", "families": {"flywheel-global-all": {
        "experiment_id": "exp-ab", "arms": [
            {"model_id": "sandbox:gpt-4o-mini:supervised:x", "version": "1.0.0", "ab_group": "challenger",
             "traffic_pct": 50.0},
            {"model_id": "gpt-4o-mini-2024-07-18", "version": None, "ab_group": "champion", "traffic_pct": 50.0}]}}}
    write_routing(table)
    simulate(home / "landing", SimConfig(seed=12, days=30, end=date(2026, 4, 1), organizations=1, leads_per_org=2000,
                                         messages_per_day=150, routing_history=((date(2026, 3, 2), table),)))
    con = connect(home / "warehouse.duckdb")
    run_pipeline(con, home / "landing", as_of=datetime(2026, 5, 15, tzinfo=timezone.utc))
    stats = arm_statistics(con, {"challenger": "sandbox:gpt-4o-mini:supervised:x",
                                 "champion": "gpt-4o-mini-2024-07-18"})
    per_lead = con.execute("""
        SELECT ab_group, count(DISTINCT lead_id), count(DISTINCT lead_id) FILTER (WHERE replied)
        FROM outcome_labels WHERE ab_group IN ('challenger', 'champion') AND is_mature GROUP BY 1""").fetchall()
    con.close()
    expected = {g: (n, r) for g, n, r in per_lead}
    for arm in ("challenger", "champion"):
        assert stats["reply_rate"][arm].n == expected[arm][0]
        assert stats["reply_rate"][arm].sum_y == expected[arm][1]
        cpm = stats["cost_per_meeting"][arm]
        assert cpm.sum_y > 0 and cpm.sum_x == stats["meeting_rate"][arm].sum_y
    assert 0.45 < stats["weighted_score"]["challenger"].n / sum(s.n for s in stats["weighted_score"].values()) < 0.55
    with dg.instance_for_test() as instance:
        res = {"warehouse": WarehouseResource(database=str(home / "warehouse.duckdb"))}
        result = dg.materialize([ab_test_results], instance=instance, resources=res)
        meta = result.asset_materializations_for_node("ab_test_results")[0].metadata
        assert meta["experiments"].value == 1
        assert any(word in meta["decisions"].value for word in ("continue", "promote", "rollback", "inconclusive"))
        assert "weighted_score" in meta["metrics"].value
        assert "| exp-ab@challenger=50/champion=50 |" in meta["decisions"].value

        def decisions_row() -> list[str]:
            result = dg.materialize([ab_test_results], instance=instance, resources=res)
            value = result.asset_materializations_for_node("ab_test_results")[0].metadata["decisions"].value
            return [cell.strip() for cell in value.strip().splitlines()[-1].strip("|").split("|")]

        # a new experiment, just published: judged on its own (still absent) traffic, not on the
        # champion's history from earlier experiments
        spec = table["families"]["flywheel-global-all"]
        spec["experiment_id"] = "exp-next"
        spec["arms"][0]["model_id"] = "sandbox:gpt-4o-mini:supervised:next"
        write_routing(table)
        row = decisions_row()
        assert row[3] == "exp-next@challenger=50/champion=50" and row[5:8] == ["0", "0", "continue"]
        # an app that stops recording allocations: every routed message of the two models is compared
        con = connect(home / "warehouse.duckdb")
        con.execute("UPDATE messages SET metadata = NULL")
        con.close()
        spec["experiment_id"], spec["arms"][0]["model_id"] = "exp-ab", "sandbox:gpt-4o-mini:supervised:x"
        write_routing(table)
        row = decisions_row()
        assert row[3] == "all (not logged)" and int(row[5]) == stats["reply_rate"]["challenger"].n


def test_decisions_roll_out_then_promote_with_mlflow_aliases_or_roll_back(tmp_path, home):
    from mlflow import MlflowClient

    from flywheel_pipeline.defs.experiments.assets import experiment_decisions
    from flywheel_pipeline.defs.experiments.automation import experiment_sensor
    from flywheel_pipeline.routing import load_routing
    from flywheel_pipeline.tracking import log_training_cycle
    from flywheel_pipeline.warehouse import model_registry as registry
    from flywheel_pipeline.warehouse.schema import connect

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    export = tmp_path / "export"
    export.mkdir()
    (export / "sft.train.jsonl").write_text("{}\n")
    con = connect(home / "warehouse.duckdb")
    kw = dict(organization_id=None, task_type="all", base_model="b", backend="sandbox", method="supervised",
              job_id="j", job_key="k", stats={}, hyperparameters={}, trained_tokens=0)
    for model, dataset in (("champ", "d1"), ("chall", "d2"), ("worse", "d3")):
        reg = registry.register(con, model_id=model, dataset_version=dataset, **kw)
        rec = log_training_cycle(tracking_uri=uri, family=reg.family, fine_tuned_model=model, version=reg.version,
                                 params={}, metrics={}, loss_curve=[], export_dir=export, dataset_version=dataset,
                                 train_file=export / "sft.train.jsonl", sandbox=True)
        registry.set_mlflow(con, model, rec.run_id, rec.registered_version)
    registry.set_status(con, "champ", "deployed", traffic_pct=100, ab_group="champion")
    registry.set_status(con, "chall", "ready", traffic_pct=10, ab_group="challenger")
    con.close()

    def decide_and_apply(challenger, decision, final=False):
        c = connect(home / "warehouse.duckdb")
        c.execute("INSERT INTO ab_test_results (evaluated_at, family, experiment_id, challenger, champion, decision, "
                  "reason, arm, final) VALUES (now()::TIMESTAMP, 'flywheel-global-all', 'e', ?, 'champ', ?, 'test', "
                  "'challenger', ?)", [challenger, decision, final])
        c.close()
        with dg.instance_for_test() as instance:
            res = {"warehouse": WarehouseResource(database=str(home / "warehouse.duckdb")),
                   "mlflow": MlflowResource(tracking_uri=uri)}
            assert dg.materialize([experiment_decisions], instance=instance, resources=res).success
        arms = load_routing()["families"]["flywheel-global-all"]["arms"]
        return {a["ab_group"]: (a["model_id"], a["traffic_pct"]) for a in arms}

    assert decide_and_apply("chall", "promote") == {"challenger": ("chall", 50.0), "champion": ("champ", 50.0)}
    with dg.instance_for_test() as instance:
        assert isinstance(experiment_sensor(dg.build_sensor_context(instance=instance)), dg.RunRequest)
    assert decide_and_apply("chall", "promote") == {"champion": ("chall", 100.0)}
    client = MlflowClient(tracking_uri=uri)
    aliases = client.get_registered_model("flywheel-global-all").aliases
    assert str(aliases["champion"]) == "2" and "challenger" not in aliases
    c = connect(home / "warehouse.duckdb")
    statuses = dict(c.execute("SELECT model_id, status FROM model_registry").fetchall())
    registry.set_status(c, "worse", "ready", traffic_pct=10, ab_group="challenger")
    c.close()
    assert statuses == {"champ": "archived", "chall": "deployed", "worse": "ready"}
    assert decide_and_apply("worse", "rollback") == {"champion": ("chall", 100.0)}
    c = connect(home / "warehouse.duckdb")
    assert c.execute("SELECT status FROM model_registry WHERE model_id = 'worse'").fetchone()[0] == "archived"
    registry.register(c, model_id="equal", dataset_version="d4", **kw)
    registry.set_status(c, "equal", "ready", traffic_pct=10, ab_group="challenger")
    c.close()
    # inconclusive before the step's planned end (a broken split): nothing changes
    assert decide_and_apply("equal", "inconclusive") == {"challenger": ("equal", 10.0), "champion": ("chall", 90.0)}
    # inconclusive at the planned end: the experiment ends, the champion keeps the traffic
    assert decide_and_apply("equal", "inconclusive", final=True) == {"champion": ("chall", 100.0)}
    c = connect(home / "warehouse.duckdb")
    assert c.execute("SELECT status, ab_group FROM model_registry WHERE model_id = 'equal'").fetchone() == (
        "archived", "inconclusive")
    c.close()
    with dg.instance_for_test() as instance:
        skip = experiment_sensor(dg.build_sensor_context(instance=instance))
        assert isinstance(skip, dg.SkipReason) and "no experiment" in skip.skip_message


def test_a_rollout_step_starts_a_new_allocation_and_the_analysis_stays_within_it(tmp_path):
    """10% then 50%: leads move into the challenger arm, so pooling both steps breaks the split
    (a sample-ratio mismatch against either weight); within the current allocation it holds."""
    from datetime import datetime, timezone

    from flywheel_pipeline.core.stats.decisions import sample_ratio_mismatch
    from flywheel_pipeline.warehouse.experiments import allocations_logged, arm_statistics
    from flywheel_pipeline.warehouse.schema import connect
    from flywheel_pipeline_tests.conftest import run_pipeline

    def table(pct: float) -> dict:
        return {"default_model": "gpt-4o-mini-2024-07-18", "families": {"flywheel-global-all": {
            "experiment_id": "exp-ramp", "arms": [
                {"model_id": "sandbox:x", "version": "1.0.0", "ab_group": "challenger", "traffic_pct": pct},
                {"model_id": "gpt-4o-mini-2024-07-18", "version": None, "ab_group": "champion",
                 "traffic_pct": 100 - pct}]}}}

    history = ((date(2026, 3, 2), table(10.0)), (date(2026, 3, 16), table(50.0)))
    simulate(tmp_path / "landing", SimConfig(seed=5, days=28, end=date(2026, 3, 30), organizations=1,
                                             leads_per_org=3000, messages_per_day=200, routing_history=history))
    con = connect(tmp_path / "wh.duckdb")
    run_pipeline(con, tmp_path / "landing", as_of=datetime(2026, 5, 1, tzinfo=timezone.utc))
    assert allocations_logged(con, "exp-ramp") and not allocations_logged(con, "another")
    # an app that records the experiment but not the allocation is not "logging allocations"
    con.execute("UPDATE messages SET metadata = json_object('experiment_id', 'exp-bare') "
                "WHERE message_key = (SELECT min(message_key) FROM messages WHERE ab_group = 'challenger')")
    assert not allocations_logged(con, "exp-bare")
    step2 = "exp-ramp@challenger=50/champion=50"
    arms = {"challenger": "sandbox:x", "champion": "gpt-4o-mini-2024-07-18"}
    pooled = arm_statistics(con, arms)
    current = arm_statistics(con, arms, step2)
    in_step2 = con.execute("SELECT count(DISTINCT (l.lead_id, l.ab_group)) FROM outcome_labels l JOIN messages m USING (message_key) "
                           "WHERE l.is_mature AND (m.metadata->>'allocation') = ?", [step2]).fetchone()[0]
    con.close()
    leads = {arm: current["weighted_score"][arm].n for arm in ("challenger", "champion")}
    both = {arm: pooled["weighted_score"][arm].n for arm in ("challenger", "champion")}
    assert sum(leads.values()) == in_step2 and sum(both.values()) > sum(leads.values())
    assert not sample_ratio_mismatch([leads["challenger"], leads["champion"]], [50, 50]).mismatch
    for weights in ([10, 90], [50, 50]):
        assert sample_ratio_mismatch([both["challenger"], both["champion"]], weights).mismatch


def test_a_newer_model_replaces_a_first_step_challenger_but_waits_for_one_mid_rollout(tmp_path, home):
    import logging

    from flywheel_pipeline.warehouse.routing_table import build_routing_table
    from flywheel_pipeline.warehouse import model_registry as registry
    from flywheel_pipeline.warehouse.schema import connect

    con = connect(tmp_path / "wh.duckdb")

    def add(model_id: str, dataset: str) -> None:
        registry.register(con, model_id=model_id, organization_id=None, task_type="all", base_model="base",
                          backend="sandbox", method="supervised", job_id=None, job_key=None,
                          dataset_version=dataset, stats={}, hyperparameters={}, trained_tokens=None)

    def arms() -> dict:
        table, _ = build_routing_table(con, "base", 10.0, {"m-1", "m-2"}, logging.getLogger("test").info)
        return {a["model_id"]: (a["ab_group"], a["traffic_pct"]) for a in table["families"]["flywheel-global-all"]["arms"]}

    add("m-1", "d1")
    assert arms() == {"m-1": ("challenger", 10.0), "base": ("champion", 90.0)}
    registry.set_status(con, "m-1", "ready", traffic_pct=50.0)  # m-1 earned a rollout step
    add("m-2", "d2")
    assert arms() == {"m-1": ("challenger", 50.0), "base": ("champion", 50.0)}  # m-2 waits
    registry.set_status(con, "m-1", "ready", traffic_pct=10.0)  # back at the first step: m-2 replaces it
    assert arms() == {"m-2": ("challenger", 10.0), "base": ("champion", 90.0)}
    assert con.execute("SELECT status FROM model_registry WHERE model_id = 'm-1'").fetchone()[0] == "archived"
    con.close()


def test_experiments_with_several_arms_from_routed_traffic(tmp_path, home):
    """Three arms with equal shares (an efficacy step): sticky K-arm assignment in the simulated
    outreach app, per-arm statistics in SQL (with each lead's pre-experiment engagement as the CUPED
    covariate), a verdict per challenger in ab_test_results, and the step's plan in the metadata."""
    from datetime import datetime, timezone

    from flywheel_pipeline.defs.experiments.assets import ab_test_results
    from flywheel_pipeline.routing import write_routing
    from flywheel_pipeline.warehouse.experiments import arm_statistics
    from flywheel_pipeline.warehouse.schema import connect
    from flywheel_pipeline_tests.conftest import run_pipeline

    spec = {"experiment_id": "exp-k", "arms": [
        {"model_id": "sandbox:a", "version": "1.0.0", "ab_group": "challenger", "traffic_pct": 100 / 3},
        {"model_id": "gpt-4.1-mini-2025-04-14", "version": None, "ab_group": "challenger_2", "traffic_pct": 100 / 3},
        {"model_id": "gpt-4o-mini-2024-07-18", "version": None, "ab_group": "champion", "traffic_pct": 100 / 3}]}
    table = {"default_model": "gpt-4o-mini-2024-07-18", "families": {"flywheel-global-all": spec}}
    write_routing(table)
    simulate(home / "landing", SimConfig(seed=21, days=40, end=date(2026, 4, 10), organizations=1,
                                         leads_per_org=1500, messages_per_day=150,
                                         routing_history=((date(2026, 3, 20), table),)))
    con = connect(home / "warehouse.duckdb")
    run_pipeline(con, home / "landing", as_of=datetime(2026, 5, 20, tzinfo=timezone.utc))
    arms = {a["ab_group"]: a["model_id"] for a in spec["arms"]}
    allocation = "exp-k@challenger=33.3333/challenger_2=33.3333/champion=33.3333"
    stats = arm_statistics(con, arms, allocation)
    expected = dict(con.execute("""
        SELECT l.ab_group, count(DISTINCT l.lead_id) FROM outcome_labels l JOIN messages m USING (message_key)
        WHERE l.is_mature AND (m.metadata->>'allocation') = ? GROUP BY 1""", [allocation]).fetchall())
    # the covariate, computed another way: per lead in the experiment, human opens, clicks and
    # replies on its messages sent before the allocation's first message
    engagement = dict(con.execute("""
        WITH start AS (SELECT min(sent_at) AS first_sent FROM messages WHERE metadata->>'allocation' = $a),
        inside AS (SELECT DISTINCT l.ab_group, l.lead_id FROM outcome_labels l JOIN messages m USING (message_key)
                   WHERE l.is_mature AND (m.metadata->>'allocation') = $a)
        SELECT i.ab_group, sum((SELECT count(*) FILTER (WHERE o.opened) + count(*) FILTER (WHERE o.clicked)
                                       + count(*) FILTER (WHERE o.replied)
                                FROM outcome_labels o
                                WHERE o.lead_id = i.lead_id AND o.sent_at < (SELECT first_sent FROM start)))
        FROM inside i GROUP BY 1""", {"a": allocation}).fetchall())
    con.close()
    assert {a: stats["weighted_score"][a].n for a in arms} == expected
    assert {a: stats["weighted_score"][a].sum_x for a in arms} == {a: float(v) for a, v in engagement.items()}
    assert all(v > 0 for v in engagement.values())
    with dg.instance_for_test() as instance:
        res = {"warehouse": WarehouseResource(database=str(home / "warehouse.duckdb"))}
        meta = dg.materialize([ab_test_results], instance=instance,
                              resources=res).asset_materializations_for_node("ab_test_results")[0].metadata
    decisions = meta["decisions"].value
    assert "| challenger | sandbox:a |" in decisions and "| challenger_2 | gpt-4.1-mini-2025-04-14 |" in decisions
    assert "| efficacy |" in decisions and "| efficacy |" in meta["plan"].value
    con = connect(home / "warehouse.duckdb")
    rows = con.execute("SELECT DISTINCT arm, step, planned_leads, variance_reduction IS NOT NULL "
                       "FROM ab_test_results ORDER BY 1").fetchall()
    plan = con.execute("SELECT step, planned_leads, baseline_leads FROM experiment_plans WHERE allocation = ?",
                       [allocation]).fetchone()
    con.close()
    # planned before the step from the champion's history (its messages before the allocation started)
    assert plan[0] == "efficacy" and plan[1] >= 1_000 and plan[2] > 100
    assert rows == [("challenger", "efficacy", plan[1], True), ("challenger_2", "efficacy", plan[1], True)]
