"""message_judgements on a real DuckDB file: every delivered message judged once per judge and
version, incrementally, identical texts copied, unknown task types under the generic judge."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
from mlflow import MlflowClient

from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.defs.learn.judgements import message_judgements
from flywheel_pipeline.defs.resources import MlflowResource, WarehouseResource
from flywheel_pipeline.warehouse.message_judgements import judge_new_messages
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.conftest import T0, message, run_pipeline, sg

SAME = "Hi Dana, the same words. Open to a call?"


def _land(landing, messages: list[dict], delivered: list[str]) -> None:
    write_jsonl(landing, "messages", messages)
    write_jsonl(landing, "sendgrid", [sg(mid, "delivered", T0 + timedelta(minutes=1)) for mid in delivered])


def test_every_delivered_message_is_judged_once_and_identical_texts_are_copied(tmp_path):
    landing = tmp_path / "landing"
    con = connect(tmp_path / "wh.duckdb")
    fresh = [message(f"m{i}", body=f"Hi Dana, message number {i}. Open to a call?") for i in range(5)]
    same = [message(f"s{i}", body=SAME) for i in range(3)]
    _land(landing, [*fresh, *same, message("u1"), message("x1", task_type="poetry")],
          [*(f"m{i}" for i in range(5)), "s0", "s1", "s2", "x1"])
    run_pipeline(con, landing)
    run = judge_new_messages(con)
    rows = dict(con.execute("SELECT m.message_id, j.judge FROM message_judgements j JOIN messages m "
                            "USING (message_key)").fetchall())
    assert set(rows) == {*(f"m{i}" for i in range(5)), "s0", "s1", "s2", "x1"}  # not the undelivered u1
    assert rows["x1"] == "heuristic:generic" and rows["m0"] == "heuristic:email_writing"
    assert run.judged + run.reused == 9
    # a second pass scores nothing
    again = judge_new_messages(con)
    assert again.judged == again.reused == 0
    scores = {r[0] for r in con.execute("SELECT score FROM message_judgements j JOIN messages m USING (message_key) "
                                        "WHERE m.message_id LIKE 's%'").fetchall()}
    assert len(scores) == 1
    # later messages: only they are judged; one whose text was judged before is copied, not scored
    # (a stored score that no scorer would give proves the copy)
    con.execute("UPDATE message_judgements SET score = 12.34 WHERE message_key IN "
                "(SELECT message_key FROM messages WHERE message_id LIKE 's%')")
    _land(landing, [message("m10", body="Something else entirely. Worth a chat?"), message("s9", body=SAME)],
          ["m10", "s9"])
    run_pipeline(con, landing)
    later = judge_new_messages(con)
    assert (later.judged, later.reused) == (1, 1)
    assert con.execute("SELECT j.score, j.reused FROM message_judgements j JOIN messages m USING (message_key) "
                       "WHERE m.message_id = 's9'").fetchone() == (12.34, True)
    assert con.execute("SELECT count(*), count(DISTINCT message_key) FROM message_judgements").fetchone() == (11, 11)
    con.close()


def test_the_asset_materializes_with_its_summary(tmp_path):
    landing, db = tmp_path / "landing", tmp_path / "wh.duckdb"
    con = connect(db)
    _land(landing, [message(f"m{i}", body=f"Hi Dana, number {i}. Open to a call?") for i in range(4)],
          [f"m{i}" for i in range(4)])
    run_pipeline(con, landing)
    con.close()
    with dg.instance_for_test() as instance:
        result = dg.materialize([message_judgements], instance=instance,
                                resources={"warehouse": WarehouseResource(database=str(db)),
                                           "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'ml.db'}")})
        assert result.success
        meta = result.asset_materializations_for_node("message_judgements")[0].metadata
        assert meta["judged_now"].value == 4 and "heuristic:email_writing" in meta["judges"].value
        # logged to MLflow per run: the summary table
        artifacts = {a.path for a in MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'ml.db'}").list_artifacts(
            meta["mlflow_run_id"].value)}
        assert {"message_judgements.json", "message_judgements.md"} <= artifacts


def _lead(first: str, company: str) -> dict:
    return {"metadata": {"first_name": first, "company": company, "industry": "logistics", "role": "VP Ops"}}


def test_the_same_text_for_another_lead_is_scored_again_and_the_same_text_and_lead_is_copied(tmp_path):
    """The content hash holds everything the scorer reads: the lead context too (personalization
    reads the first name and company)."""
    landing = tmp_path / "landing"
    con = connect(tmp_path / "wh.duckdb")
    text = "Hi Dana, Acme moves freight 30% faster with us. Open to a call next week?"
    _land(landing, [message("d1", body=text, **_lead("Dana", "Acme"))], ["d1"])
    run_pipeline(con, landing)
    assert judge_new_messages(con).judged == 1
    con.execute("UPDATE message_judgements SET score = 12.34")  # a score no scorer gives: a copy shows it
    _land(landing, [message("d2", body=text, **_lead("Dana", "Acme")),
                    message("z1", body=text, **_lead("Lee", "Zeta"))], ["d2", "z1"])
    run_pipeline(con, landing)
    run = judge_new_messages(con)
    assert (run.judged, run.reused) == (1, 1)
    rows = dict(con.execute("SELECT m.message_id, (j.score, j.reused, j.content_hash) FROM message_judgements j "
                            "JOIN messages m USING (message_key)").fetchall())
    assert rows["d2"][:2] == (12.34, True) and rows["d2"][2] == rows["d1"][2]
    assert rows["z1"][1] is False and rows["z1"][0] != 12.34 and rows["z1"][2] != rows["d1"][2]
    # and the scorer really tells them apart: personalization found for Dana at Acme, not for Lee at Zeta
    dims = dict(con.execute("SELECT m.message_id, j.dimensions->>'personalization' FROM message_judgements j "
                            "JOIN messages m USING (message_key) WHERE m.message_id IN ('z1')").fetchall())
    assert float(dims["z1"]) == 0.0
    con.close()


def test_a_task_type_with_tabs_or_capitals_is_judged_by_its_family(tmp_path):
    landing = tmp_path / "landing"
    con = connect(tmp_path / "wh.duckdb")
    _land(landing, [message("t1", task_type="\tCold_Email\n"), message("t2", task_type=" reply ")], ["t1", "t2"])
    run_pipeline(con, landing)
    run = judge_new_messages(con)
    assert run.by_judge == {"heuristic:email_writing": 1, "heuristic:conversation_response": 1}
    con.close()
