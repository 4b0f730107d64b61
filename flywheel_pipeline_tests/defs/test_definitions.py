"""The code location as Dagster loads it: every environment, the unattended loop's switch, and
the landing sensor after ingestion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date

import dagster as dg
import pytest

from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.simulator import SimConfig, simulate
from flywheel_pipeline.definitions import build_definitions
from flywheel_pipeline.defs.ingest.automation import landing_sensor
from flywheel_pipeline.defs.resources import LabelPolicyResource, LandingZoneResource, WarehouseResource
from flywheel_pipeline_tests.conftest import REPO
from flywheel_pipeline_tests.domains import only_assets_of

DOMAINS = ("ingest", "outcomes", "datasets", "training", "experiments", "leaderboard", "learn")


@pytest.mark.parametrize("environment", ["local", "production"])
def test_the_definitions_load_in_every_environment(environment, home):
    repo = build_definitions(environment).get_repository_def()
    groups = {g for a in repo.assets_defs_by_key.values() for g in a.group_names_by_key.values()}
    assert groups == set(DOMAINS)
    assert set(repo.job_names) >= {"refresh", "datasets", "retrain", "experiments", "learn", "maintenance"}
    assert {s.name for s in repo.sensor_defs} == {"landing_sensor", "new_outcomes_sensor", "experiment_sensor",
                                                 "run_failure_sensor"}
    assert {s.name for s in repo.schedule_defs} == {"daily_label_refresh", "weekly_retrain", "daily_lake_maintenance"}
    assert {k.name for k in repo.asset_checks_defs_by_key} == {
        "one_label_per_message", "quality_score_in_range", "funnel_flags_consistent", "maturity_consistent",
        "quarantine_rate", "email_events_reference_messages", "sft_export_is_valid", "dpo_export_is_valid",
        "sft_export_has_no_contact_pii", "dpo_export_has_no_contact_pii", "one_champion_per_family",
        "candidate_not_worse_than_champion"}
    # every asset's resources are bound in this environment
    required = {key for a in repo.assets_defs_by_key.values() for key in a.required_resource_keys}
    assert required - {"io_manager"} <= set(repo.get_top_level_resources())  # io_manager: Dagster's default


def _statuses(automation: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "FLYWHEEL_AUTOMATION"}
    if automation is not None:
        env["FLYWHEEL_AUTOMATION"] = automation
    code = ("import json; from flywheel_pipeline.definitions import defs; r = defs.get_repository_def(); "
            "print(json.dumps({d.name: d.default_status.value for d in [*r.sensor_defs, *r.schedule_defs]}))")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_loop_turns_unattended_unless_switched_off():
    on = _statuses(None)
    assert set(on.values()) == {"RUNNING"}, on
    off = _statuses("off")
    assert {name for name, status in off.items() if status == "STOPPED"} == {
        "weekly_retrain", "new_outcomes_sensor", "experiment_sensor", "daily_lake_maintenance"}
    # what keeps the warehouse current keeps running
    assert off["landing_sensor"] == off["daily_label_refresh"] == off["run_failure_sensor"] == "RUNNING"
    env = {**os.environ, "FLYWHEEL_AUTOMATION": "sometimes"}
    bad = subprocess.run([sys.executable, "-c", "import flywheel_pipeline.definitions"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "FLYWHEEL_AUTOMATION must be 'on' or 'off'" in bad.stderr


def test_the_landing_sensor_launches_nothing_for_files_ingestion_took(home):
    """After a refresh (the demo's, or `flywheel refresh`), a sensor with no cursor yet (a first
    `make ui`) launches nothing; a file that lands afterwards launches a refresh."""
    landing = home / "landing"
    simulate(landing, SimConfig(seed=3, days=5, end=date(2026, 5, 1), organizations=1, leads_per_org=30,
                                messages_per_day=10))
    res = {"warehouse": WarehouseResource(database=str(home / "wh.duckdb")),
           "landing": LandingZoneResource(path=str(landing)), "label_policy": LabelPolicyResource()}
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources=res)
        assert isinstance(landing_sensor(ctx), dg.RunRequest)  # nothing ingested yet
        assert dg.materialize(only_assets_of("ingest"), instance=instance, resources=res).success
        ctx = dg.build_sensor_context(instance=instance, resources=res)
        skipped = landing_sensor(ctx)
        assert isinstance(skipped, dg.SkipReason), skipped
        write_jsonl(landing, "replies", [{"reply_id": "r-new"}])
        ctx = dg.build_sensor_context(instance=instance, resources=res)
        request = landing_sensor(ctx)
        assert isinstance(request, dg.RunRequest) and request.tags["flywheel/sources"] == "replies"
        # files under another landing zone were never taken there
        other = {**res, "landing": LandingZoneResource(path=str(home / "elsewhere"))}
        write_jsonl(home / "elsewhere", "messages", [{"message_id": "m"}])
        assert isinstance(landing_sensor(dg.build_sensor_context(instance=instance, resources=other)),
                          dg.RunRequest)
        # and a new (or deleted and recreated) warehouse has taken nothing from this one
        fresh = {**res, "warehouse": WarehouseResource(database=str(home / "new.duckdb"))}
        assert isinstance(landing_sensor(dg.build_sensor_context(instance=instance, resources=fresh)),
                          dg.RunRequest)


def test_the_dagster_layer_holds_no_sql():
    """defs/ is wiring: every query is in warehouse/, every rule in core/."""
    import re

    defs_dir = REPO / "flywheel_pipeline" / "defs"
    offenders = [f"{path.relative_to(defs_dir)}:{number}"
                 for path in defs_dir.rglob("*.py")
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if re.search(r"\.execute(many)?\(|\b(SELECT|INSERT INTO|UPDATE \w+ SET|CREATE TABLE)\b", line)]
    assert offenders == []


def test_every_asset_that_writes_the_warehouse_takes_the_pool(home):
    """DuckDB allows one writing process per file: every asset with the warehouse resource is in
    the duckdb_warehouse pool, except the three that wait on a provider for minutes to hours."""
    from flywheel_pipeline.defs.resources import WAREHOUSE_POOL

    repo = build_definitions("local").get_repository_def()
    outside = sorted(key.to_user_string() for key, asset in repo.assets_defs_by_key.items()
                     if "warehouse" in asset.required_resource_keys
                     and asset.node_def.pool != WAREHOUSE_POOL)
    assert outside == ["fine_tuned_model", "message_llm_judgements", "offline_evaluation"]
    # and the maintenance op, which merges files: never beside a writer (warehouse/lake_maintenance.py)
    assert [node.definition.pool for node in repo.get_job("maintenance").graph.nodes] == [WAREHOUSE_POOL]
