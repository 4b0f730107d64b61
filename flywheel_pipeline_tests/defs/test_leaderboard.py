"""The leaderboard recovers the simulator's hidden model quality; velocity reports weekly numbers."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone

import dagster as dg
from mlflow import MlflowClient

from flywheel_pipeline.simulator import SimConfig, simulate
from flywheel_pipeline.defs.leaderboard.assets import flywheel_velocity, model_leaderboard
from flywheel_pipeline.defs.resources import MlflowResource, WarehouseResource
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.conftest import run_pipeline


def test_leaderboard_ranks_models_by_their_hidden_quality_and_logs_to_mlflow(tmp_path, home):
    simulate(tmp_path / "landing", SimConfig(seed=31, days=60, end=date(2026, 5, 1), organizations=2,
                                             leads_per_org=1500, messages_per_day=200))
    con = connect(tmp_path / "wh.duckdb")
    run_pipeline(con, tmp_path / "landing", as_of=datetime(2026, 6, 1, tzinfo=timezone.utc))
    con.close()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = {"warehouse": WarehouseResource(database=str(tmp_path / "wh.duckdb")),
           "mlflow": MlflowResource(tracking_uri=uri)}
    with dg.instance_for_test() as instance:
        result = dg.materialize([model_leaderboard, flywheel_velocity], instance=instance, resources=res)
        assert result.success
        meta = result.asset_materializations_for_node("model_leaderboard")[0].metadata
        table = meta["leaderboard"].value
        velocity = result.asset_materializations_for_node("flywheel_velocity")[0].metadata
    order = [line.split("|")[2].strip() for line in table.splitlines()[2:]]
    assert order[0].startswith("ft:gpt-4o-mini") and order[-1] == "gpt-4o-mini-2024-07-18"
    assert meta["leader"].value.startswith("ft:") and "baseline" in table and "[" in table
    run = MlflowClient(tracking_uri=uri).get_run(meta["mlflow_run_id"].value)
    assert any(k.endswith("/weighted_score") for k in run.data.metrics)
    published = json.loads((home / "leaderboard.json").read_text())  # what the service's /leaderboard serves
    assert meta["published"].value == str(home / "leaderboard.json")
    assert min(published["models"], key=lambda b: b.get("rank", 99))["model"] == meta["leader"].value
    # each organization's board counts its own messages only; together they make the global one
    organizations = published["organizations"]
    assert len(organizations) == 2
    for b in published["models"]:
        assert b["messages"] == sum(r["messages"] for rows in organizations.values() for r in rows
                                    if r["model"] == b["model"])
    assert velocity["weeks"].value >= 8 and "training-ready" in velocity["weekly"].value


def test_leaderboard_artifacts_stay_beside_the_mlflow_store(tmp_path, monkeypatch):
    from flywheel_pipeline.tracking import log_leaderboard

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    run_id = log_leaderboard(uri, [{"model": "m:1", "score": 0.1, "reply": 0.2, "meeting": 0.1, "close": 0.0,
                                    "leads": 5}], "| table |").run_id
    assert run_id and not (tmp_path / "mlruns").exists()
    assert list((tmp_path / "store" / "mlartifacts").rglob("leaderboard.md"))
