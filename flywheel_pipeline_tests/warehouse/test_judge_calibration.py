"""The judge_calibration asset on simulated worlds: where outcomes depend on nothing no judge is
trusted; on the demo world with planted text drivers, a judge whose score tracks them is trusted,
and the heuristic email scorer (v1), whose score does not, is not."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timezone

import dagster as dg
from mlflow import MlflowClient

from flywheel_pipeline.defs.learn.calibration import judge_calibration
from flywheel_pipeline.defs.learn.judgements import message_judgements
from flywheel_pipeline.defs.resources import MlflowResource, WarehouseResource
from flywheel_pipeline.simulator import SimConfig, simulate
from flywheel_pipeline.simulator.world import DEFAULT_MODELS
from flywheel_pipeline.warehouse.judge_calibration import trust
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.conftest import run_pipeline

WORLD = dict(seed=31, days=60, end=date(2026, 5, 1), organizations=2, leads_per_org=1500, messages_per_day=200)
AS_OF = datetime(2026, 6, 15, tzinfo=timezone.utc)

# a judge that reads the planted drivers (docs/learning.md): a question in the subject, the lead's
# first name in the body, no long body
PLANTED_JUDGE_SQL = """
INSERT INTO message_judgements (message_key, judge, criteria_version, content_hash, score, dimensions, reused,
                                judged_at)
SELECT m.message_key, 'planted-drivers', '1', md5(m.body),
       30 * contains(m.subject, '?')::INTEGER + 30 * contains(m.body, m.metadata->>'first_name')::INTEGER
       + 40 * (length(m.body) < 900)::INTEGER, NULL, false, now()::TIMESTAMP
FROM messages m"""


def _world(tmp_path, *, null: bool):
    models = tuple(dataclasses.replace(m, quality=1.0) for m in DEFAULT_MODELS) if null else DEFAULT_MODELS
    simulate(tmp_path / "landing", SimConfig(**WORLD, text_effects=not null, models=models))
    con = connect(tmp_path / "wh.duckdb")
    run_pipeline(con, tmp_path / "landing", as_of=AS_OF)
    con.close()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return {"warehouse": WarehouseResource(database=str(tmp_path / "wh.duckdb")),
            "mlflow": MlflowResource(tracking_uri=uri)}, uri


def _rows(tmp_path) -> dict[tuple[str, str, str], tuple]:
    con = connect(tmp_path / "wh.duckdb", read_only=True)
    rows = con.execute("SELECT judge, task_type, metric, n, auc, auc_low, auc_high, spearman, trusted "
                       "FROM judge_calibration").fetchall()
    con.close()
    return {r[:3]: r[3:] for r in rows}


def test_on_a_world_where_nothing_matters_no_judge_is_trusted(tmp_path):
    res, uri = _world(tmp_path, null=True)
    with dg.instance_for_test() as instance:
        result = dg.materialize([message_judgements, judge_calibration], instance=instance, resources=res)
        meta = result.asset_materializations_for_node("judge_calibration")[0].metadata
    rows = _rows(tmp_path)
    judges = {j for j, _, _ in rows}
    assert judges == {"heuristic:email_writing", "human"}
    assert {t for _, t, _ in rows} == {"all", "cold_email", "follow_up"}
    assert {m for _, _, m in rows} == {"reply", "positive_reply", "meeting"}
    assert not [k for k, r in rows.items() if r[-1]], "a judge was trusted on a null world"
    n, auc, low, high, *_ = rows[("heuristic:email_writing", "all", "reply")]
    assert n > 10_000 and low < auc < high and low < 0.5 < high
    assert "No judge is trusted" in meta["trusted"].value and "simultaneous 95%" in meta["interval"].value
    # logged to MLflow: the table, the deciles and a calibration curve per metric
    artifacts = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(meta["mlflow_run_id"].value)}
    assert {"judge_calibration.json", "judge_calibration.md", "judge_calibration_deciles.json",
            "calibration_curve_reply.png", "calibration_curve_meeting.png"} <= artifacts
    con = connect(tmp_path / "wh.duckdb", read_only=True)
    deciles = con.execute("SELECT count(*), sum(n) FROM judge_calibration_deciles "
                          "WHERE judge = 'heuristic:email_writing' AND task_type = 'all'").fetchone()
    assert deciles == (10, n)
    assert trust(con, ["heuristic:email_writing", "nobody"], "reply", "all").keys() == {"heuristic:email_writing"}
    con.close()


def test_on_the_planted_world_a_judge_that_tracks_the_drivers_is_trusted(tmp_path):
    res, _ = _world(tmp_path, null=False)
    con = connect(tmp_path / "wh.duckdb")
    con.execute(PLANTED_JUDGE_SQL)
    con.close()
    with dg.instance_for_test() as instance:
        result = dg.materialize([message_judgements, judge_calibration], instance=instance, resources=res)
        meta = result.asset_materializations_for_node("judge_calibration")[0].metadata
    rows = _rows(tmp_path)
    for task_type in ("all", "cold_email", "follow_up"):
        n, auc, low, high, spearman, trusted = rows[("planted-drivers", task_type, "reply")]
        assert trusted and low > 0.5 and auc > 0.55, (task_type, rows[("planted-drivers", task_type, "reply")])
    assert "`planted-drivers` on all: reply" in meta["trusted"].value
    # the heuristic email scorer v1 does not track the planted drivers: it is not trusted (the
    # honest finding recorded in docs/learning.md)
    assert not any(r[-1] for k, r in rows.items() if k[0].startswith("heuristic:"))
