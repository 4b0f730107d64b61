"""warehouse/outcome_drivers.py and the outcome_drivers asset: features from real rows, and the
demo world's planted drivers recovered with the right sign (and its null features not)."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone

import dagster as dg
import pytest
from mlflow import MlflowClient

from flywheel_pipeline.defs.learn.drivers import outcome_drivers
from flywheel_pipeline.defs.learn.judgements import message_judgements
from flywheel_pipeline.defs.resources import MlflowResource, WarehouseResource
from flywheel_pipeline.simulator import SimConfig, simulate
from flywheel_pipeline.warehouse.label_layout import FLAG
from flywheel_pipeline.warehouse.outcome_drivers import FEATURES, feature_cells, message_features
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.conftest import run_pipeline

BODY_60 = "Hi Ada, teams like Lopez Labs " + " ".join(["word"] * 54)  # 60 words


def _message(con, key, body, subject, metadata, sent_at, flags, mature=True, org="org_a", task="cold_email"):
    con.execute("""INSERT INTO messages BY NAME SELECT ? AS message_id, ? AS message_key, ? AS organization_id,
                   'lead' AS lead_id, ?::TIMESTAMP AS sent_at, 'gpt-x' AS model_id, ? AS task_type, ? AS subject,
                   ? AS body, 'PAS' AS framework, 'direct' AS tone, ?::JSON AS metadata, 'f' AS source_file,
                   1 AS line_no, 1 AS batch_id""",
                [f"m{key}", key, org, sent_at, task, subject, body, json.dumps(metadata) if metadata else None])
    con.execute("INSERT INTO packed_labels (message_key, sent_at, flags, is_mature) VALUES (?, ?::TIMESTAMP, ?, ?)",
                [key, sent_at, sum(FLAG[f] for f in flags), mature])


def test_features_are_derived_from_the_message_rows(tmp_path):
    con = connect(tmp_path / "wh.duckdb")
    _message(con, 1, BODY_60, "Lopez Labs: worth a quick chat?",
             {"first_name": "Ada", "company": "Lopez Labs", "prompt_template": "pain_first", "prompt_version": "2"},
             "2026-04-06 10:15:00", ("delivered", "replied", "positive_reply", "meeting_booked"))
    _message(con, 2, None, None, None, "2026-04-11 23:59:00", ("delivered",), task=None)
    _message(con, 3, "Hi there, a short note.", "Quick question", {"first_name": "Ben", "company": "Kim Group"},
             "2026-04-07 08:00:00", ("delivered", "replied"))
    _message(con, 4, "not mature yet", "x", None, "2026-04-07 08:00:00", ("delivered", "replied"), mature=False)
    _message(con, 5, "bounced", "x", None, "2026-04-07 08:00:00", ("bounced",))
    names = ("organization_id", "task_type") + FEATURES + ("replied", "positive_reply", "meeting_booked")
    rows = [dict(zip(names, row)) for row in message_features(con)]
    assert len(rows) == 3  # immature and undelivered messages are left out
    by_template = {r["prompt_template"] + r["task_type"]: r for r in rows}
    first = by_template.pop("pain_firstcold_email")
    assert first == {"organization_id": "org_a", "task_type": "cold_email", "framework": "PAS", "tone": "direct",
                     "model_id": "gpt-x",
                     "prompt_template": "pain_first", "prompt_version": "2", "body_words": "50-99",
                     "subject_words": "4-6", "subject_question": "yes", "personalization": "first_name+company",
                     "send_hour_utc": "09-11", "weekday_utc": "Monday", "replied": 1, "positive_reply": 1,
                     "meeting_booked": 1}
    bare = by_template["unknownunknown"]
    assert (bare["prompt_template"], bare["body_words"], bare["subject_words"], bare["subject_question"],
            bare["personalization"], bare["send_hour_utc"], bare["weekday_utc"], bare["replied"]) == (
        "unknown", "0-49", "unknown", "unknown", "unknown", "21-23", "Saturday", 0)
    third = by_template["unknowncold_email"]
    assert (third["personalization"], third["subject_words"], third["prompt_version"]) == ("none", "1-3", "unknown")
    cells = {(c.task_type, c.feature, c.value): c for c in feature_cells(con)}
    assert len({(c.organization_id, c.task_type, c.feature) for c in cells.values()}) == 2 * len(FEATURES)
    assert cells[("cold_email", "tone", "direct")].n == 2
    assert cells[("cold_email", "tone", "direct")].events == {"reply_rate": 2, "positive_reply_rate": 1,
                                                              "meeting_rate": 1}
    con.close()


@pytest.mark.parametrize("text", ["", " ", "one", "  two words  ", "Hi Ada,\n\nline\tthree\r\n- https://x\n\n\n\nBest,",
                                  "a" + " " * 16 + "b", "\n".join(["w"] * 180)])
def test_word_counts_equal_a_regular_expressions(text):
    import duckdb

    from flywheel_pipeline.warehouse.outcome_drivers import _blanks_to_spaces, _words

    con = duckdb.connect()
    ours = con.execute(f"SELECT {_words('t')} FROM (SELECT {_blanks_to_spaces('?::VARCHAR')} AS t)", [text]).fetchone()
    assert ours[0] == len(text.split())


@pytest.mark.parametrize("text_effects", [True, False])
def test_outcome_drivers_recovers_the_demo_worlds_planted_drivers(tmp_path, text_effects):
    simulate(tmp_path / "landing", SimConfig(seed=31, days=60, end=date(2026, 5, 1), organizations=2,
                                             leads_per_org=1500, messages_per_day=200, text_effects=text_effects))
    con = connect(tmp_path / "wh.duckdb")
    run_pipeline(con, tmp_path / "landing", as_of=datetime(2026, 6, 15, tzinfo=timezone.utc))
    con.close()
    res = {"warehouse": WarehouseResource(database=str(tmp_path / "wh.duckdb")),
           "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")}
    with dg.instance_for_test() as instance:
        result = dg.materialize([message_judgements, outcome_drivers], instance=instance, resources=res)
        assert result.success
        meta = result.asset_materializations_for_node("outcome_drivers")[0].metadata
    con = connect(tmp_path / "wh.duckdb", read_only=True)
    table = {(f, v, m): (est, low, high, sig) for f, v, m, est, low, high, sig in con.execute(
        "SELECT feature, value, metric, estimate, ci_low, ci_high, significant FROM outcome_drivers "
        "WHERE task_type = 'all'").fetchall()}
    columns = {r[0] for r in con.execute("DESCRIBE outcome_drivers").fetchall()}
    con.close()
    assert {"feature", "value", "metric", "n", "rate", "estimate", "ci_low", "ci_high", "p_adjusted",
            "significant"} <= columns
    significant = {key for key, row in table.items() if row[3]}
    text = {"subject_question", "body_words", "personalization", "subject_words"}
    null = {"tone", "framework", "weekday_utc", "send_hour_utc", "prompt_template", "prompt_version"}
    assert not {key for key in significant if key[0] in null}
    if text_effects:
        for key, sign in ((("subject_question", "yes", "reply_rate"), 1), (("personalization", "none", "reply_rate"), -1),
                          (("body_words", "150-199", "reply_rate"), -1)):
            estimate, low, high, sig = table[key]
            assert sig and estimate * sign > 0 and (low > 0 if sign > 0 else high < 0), (key, table[key])
        assert "subject_question" in meta["significant_drivers"].value
        advice = meta["guidance"].value
        assert all(t["avoid"] and t["avoid"][0]["word_range"] == [150, 199] for t in advice["task_types"].values())
    else:
        assert not {key for key in significant if key[0] in text}
    # the models' hidden quality drives outcomes in both worlds
    assert table[("model_id", "gpt-4o-mini-2024-07-18", "reply_rate")][3]
    assert meta["tested"].value > 50 and meta["messages"].value > 5000
    # the judges' dimension scores are features too, banded
    judged = {(f, v) for f, v, m in table if f.startswith("heuristic:email_writing/") and m == "reply_rate"}
    assert {f for f, _ in judged} >= {"heuristic:email_writing/score", "heuristic:email_writing/personalization",
                                      "heuristic:email_writing/subject"}
    assert {v for _, v in judged} <= {"low", "mid", "high"}
    judged_significant = {(f, v) for f, v, m in significant if f.startswith("heuristic:") and m == "reply_rate"}
    if text_effects:  # the length dimension sees the long bodies, readability rewards them: they pull apart
        # (why the heuristic's overall score is not trusted on this world; docs/learning.md)
        assert table[("heuristic:email_writing/length", "high", "reply_rate")][0] > 0
        assert table[("heuristic:email_writing/readability", "high", "reply_rate")][0] < 0
        assert {("heuristic:email_writing/length", "high"),
                ("heuristic:email_writing/readability", "high")} <= judged_significant
    else:
        assert not judged_significant
    # logged to MLflow with the forest plots
    artifacts = {a.path for a in MlflowClient(tracking_uri=res["mlflow"].tracking_uri).list_artifacts(
        meta["mlflow_run_id"].value)}
    assert {"outcome_drivers.json", "outcome_drivers.md", "guidance.json", "drivers_reply_rate.png"} <= artifacts
