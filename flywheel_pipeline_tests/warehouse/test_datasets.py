"""Training data: selection rules, the lead split, dedupe, preference pairs, exports and the
Dagster dataset assets with their blocking checks."""

from __future__ import annotations

import json
from datetime import date, timedelta

import dagster as dg
import duckdb
import pytest

from flywheel_pipeline.core.datasets import dedupe_key, lead_bucket, split_for_lead
from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.simulator import SimConfig, simulate
from flywheel_pipeline.defs.resources import (ExportsResource, LabelPolicyResource, LandingZoneResource,
                                              WarehouseResource)
from flywheel_pipeline.warehouse.datasets import (PairConfig, SelectionConfig, build_preference_pairs,
                                                  build_training_examples, export_jsonl, redact_new_messages)
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.conftest import T0, crm, message, run_pipeline, sg
from flywheel_pipeline_tests.domains import assets_of, checks_of, only_assets_of

D = timedelta(days=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small simulated world, ingested, labelled and redacted once for the module."""
    root = tmp_path_factory.mktemp("world")
    simulate(root / "landing", SimConfig(seed=21, days=60, end=date(2026, 5, 1), organizations=2,
                                         leads_per_org=200, messages_per_day=40))
    con = connect(root / "wh.duckdb")
    run_pipeline(con, root / "landing", as_of=T0.replace(month=5, day=1))
    redact_new_messages(con)
    yield con, root
    con.close()


def test_split_is_by_lead_and_matches_sql():
    assert split_for_lead("lead-1", 0.0) == "train"
    shares = [split_for_lead(f"lead-{i}", 0.1) for i in range(5000)]
    assert 0.08 < shares.count("validation") / 5000 < 0.12
    con = duckdb.connect()
    sql = con.execute("SELECT ('0x' || substr(sha256('flywheel-split-v1:lead-77'), 1, 15))::UBIGINT / 16^15"
                      ).fetchone()[0]
    assert sql == pytest.approx(lead_bucket("lead-77"))
    with pytest.raises(ValueError):
        split_for_lead("x", 1.0)


def test_dedupe_key_collapses_the_same_template_with_other_names():
    a = "Hi {{first_name}}, see [URL]. Call me on [PHONE]. 3 ideas"
    b = "hi {{first_name}},  see [URL].\nCall me on [PHONE]. 4 ideas"
    assert dedupe_key(a) == dedupe_key(b)
    assert dedupe_key(a) != dedupe_key("Hi {{first_name}}, something else entirely")


def test_no_lead_on_both_sides_of_the_split(world):
    con, _ = world
    stats = build_training_examples(con, SelectionConfig(include_negative_examples=True))
    assert stats["train"] > 0 and stats["validation"] > 0
    leaks = con.execute("SELECT count(*) FROM (SELECT lead_id FROM training_examples GROUP BY 1 "
                        "HAVING count(DISTINCT split) > 1)").fetchone()[0]
    assert leaks == 0
    pairs = build_preference_pairs(con, PairConfig())
    assert pairs["pairs"] > 0
    pair_leaks = con.execute("""
        WITH sides AS (SELECT preferred_lead_id AS lead, split FROM preference_pairs
                       UNION ALL SELECT non_preferred_lead_id, split FROM preference_pairs
                       UNION ALL SELECT lead_id, split FROM training_examples)
        SELECT count(*) FROM (SELECT lead FROM sides GROUP BY 1 HAVING count(DISTINCT split) > 1)""").fetchone()[0]
    assert pair_leaks == 0


def test_selection_rules_thresholds_negatives_and_caps(world):
    con, _ = world
    stats = build_training_examples(con, SelectionConfig(min_quality_score=0.6))
    assert stats["negatives"] == 0
    assert con.execute("SELECT min(quality_score) FROM training_examples").fetchone()[0] >= 0.6
    stats = build_training_examples(con, SelectionConfig(include_negative_examples=True, max_per_task_framework=5))
    rows = con.execute("SELECT label, task_type, framework, count(*) FROM training_examples GROUP BY ALL").fetchall()
    assert rows and all(n <= 5 for *_, n in rows)
    assert stats["duplicates_removed"] >= 0 and stats["capped_or_limited"] > 0
    # immature or bounced labels never become examples, positive or negative
    bad = con.execute("""
        SELECT count(*) FROM training_examples t JOIN outcome_labels l USING (message_id)
        WHERE NOT l.is_mature OR l.bounced""").fetchone()[0]
    assert bad == 0
    assert build_training_examples(con, SelectionConfig(limit=7))["examples"] == 7
    with pytest.raises(ValueError):
        build_training_examples(con, SelectionConfig(include_negative_examples=True, max_negative_score=0.7))


def test_duplicates_keep_the_best_scored_instance(world):
    con, _ = world
    build_training_examples(con, SelectionConfig(min_quality_score=0.0))
    assert con.execute("SELECT count(*) - count(DISTINCT dedupe_key) FROM training_examples").fetchone()[0] == 0
    worse = con.execute("""
        SELECT count(*) FROM training_examples t
        JOIN redacted_messages r USING (dedupe_key) JOIN message_labels l ON l.message_key = r.message_key
        WHERE l.is_mature AND NOT l.bounced AND l.quality_score > t.quality_score""").fetchone()[0]
    assert worse == 0


def test_preference_pairs_have_margin_and_different_outputs(world):
    con, _ = world
    stats = build_preference_pairs(con, PairConfig(min_margin=0.3))
    assert stats["min_margin"] >= 0.3
    identical = con.execute("SELECT count(*) FROM preference_pairs WHERE preferred = non_preferred").fetchone()[0]
    reused = con.execute("""SELECT count(*) FROM (SELECT m FROM (SELECT preferred_message_id AS m FROM preference_pairs
                             UNION ALL SELECT non_preferred_message_id FROM preference_pairs) GROUP BY 1
                             HAVING count(*) > 1)""").fetchone()[0]
    assert identical == 0 and reused == 0


def test_immature_labels_never_become_negatives(tmp_path):
    landing = tmp_path / "landing"
    write_jsonl(landing, "messages", [message(f"old{i}", lead=f"L{i}", sent=T0 - 30 * D) for i in range(3)]
                + [message("young", lead="Y", sent=T0 - D)])
    write_jsonl(landing, "sendgrid", [sg(m, "delivered", T0 - 30 * D) for m in ("old0", "old1", "old2")]
                + [sg("young", "delivered", T0 - D)])
    con = connect(tmp_path / "wh.duckdb")
    run_pipeline(con, landing, as_of=T0)
    redact_new_messages(con)
    build_training_examples(con, SelectionConfig(include_negative_examples=True, validation_fraction=0))
    ids = sorted(r[0] for r in con.execute("SELECT message_id FROM training_examples").fetchall())
    assert "young" not in ids and len(ids) >= 1


def test_export_is_versioned_by_content_and_valid(world, tmp_path):
    con, _ = world
    build_training_examples(con, SelectionConfig())
    build_preference_pairs(con, PairConfig())
    first = export_jsonl(con, tmp_path, ["sft", "dpo", "trl_dpo", "trl_kto"])
    again = export_jsonl(con, tmp_path, ["sft", "dpo", "trl_dpo", "trl_kto"])
    assert (first.version, again.reused) == (again.version, True)
    assert json.loads((first.directory / "manifest.json").read_text())["dataset_version"] == first.version
    line = json.loads(first.files["sft.train.jsonl"].read_text().splitlines()[0])
    assert [m["role"] for m in line["messages"]] == ["system", "user", "assistant"]
    pair = json.loads(first.files["dpo.train.jsonl"].read_text().splitlines()[0])
    assert set(pair) == {"input", "preferred_output", "non_preferred_output"}
    kto = json.loads(first.files["trl_kto.train.jsonl"].read_text().splitlines()[0])
    assert set(kto) == {"prompt", "completion", "label"}
    build_training_examples(con, SelectionConfig(min_quality_score=0.7))
    assert export_jsonl(con, tmp_path, ["sft"]).version != first.version


def _resources(root):
    return {"warehouse": WarehouseResource(database=str(root / "wh.duckdb")),
            "landing": LandingZoneResource(path=str(root / "landing")),
            "label_policy": LabelPolicyResource(), "exports": ExportsResource(path=str(root / "exports"))}


def test_dataset_assets_materialize_with_passing_checks_and_metadata(tmp_path):
    simulate(tmp_path / "landing", SimConfig(seed=4, days=45, end=date(2026, 5, 1), organizations=1,
                                             leads_per_org=150, messages_per_day=30))
    with dg.instance_for_test() as instance:
        result = dg.materialize(assets_of("ingest", "outcomes", "datasets"),
                                instance=instance, resources=_resources(tmp_path),
                                run_config={"ops": {"training_examples": {"config": {"include_negative_examples": True}},
                                                    "sft_jsonl_export": {"config": {"include_trl": True}}}})
        assert result.success
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks["sft_export_is_valid"] and checks["dpo_export_is_valid"]
        assert checks["sft_export_has_no_contact_pii"] and checks["dpo_export_has_no_contact_pii"]
        meta = {e.asset_key.to_user_string(): e.materialization.metadata
                for e in result.get_asset_materialization_events()}
        sft = meta["sft_jsonl_export"]
        assert len(sft["dataset_version"].value) == 16 and sft["valid"].value
        assert sft["tokens_per_example"].value["max"] > 0 and sft["estimated_training_tokens"].value > 0
        assert "o200k_base" in sft["token_counting"].value
        assert meta["training_examples"]["negatives"].value > 0
        assert meta["preference_pairs"]["pairs"].value > 0


def test_pii_left_in_an_export_fails_the_blocking_check(tmp_path):
    landing = tmp_path / "landing"
    write_jsonl(landing, "messages", [
        message(f"m{i}", lead=f"L{i}", sent=T0 - 30 * D,
                body=f"Hello, write back to me at jordan{i} at outreach dot io - variant {'x' * i}") for i in range(12)])
    write_jsonl(landing, "crm", [crm(f"c{i}", "meeting_booked", T0 - 29 * D, message_id=f"m{i}") for i in range(12)])
    res = _resources(tmp_path)
    with dg.instance_for_test() as instance:
        ok = dg.materialize([*only_assets_of("ingest", "outcomes", "datasets"), *checks_of("datasets")], instance=instance,
                            resources=res, raise_on_error=False,
                            run_config={"ops": {"training_examples": {"config": {"validation_fraction": 0.0}}}})
        checks = {e.check_name: e.passed for e in ok.get_asset_check_evaluations()}
        assert checks["sft_export_has_no_contact_pii"]  # obfuscated addresses were redacted
        # now a line with an address slips into the export directory: the check must fail
        event = instance.get_latest_materialization_event(dg.AssetKey("sft_jsonl_export"))
        directory = event.asset_materialization.metadata["path"].value
        with open(f"{directory}/sft.train.jsonl", "a") as fh:
            fh.write(json.dumps({"messages": [{"role": "user", "content": "mail ada@acme.com"},
                                              {"role": "assistant", "content": "ok"}]}) + "\n")
        from flywheel_pipeline.defs.datasets.checks import sft_export_has_no_contact_pii
        bad = sft_export_has_no_contact_pii(dg.build_asset_check_context(instance=instance))
        assert not bad.passed and bad.metadata["lines_with_email_or_phone"].value == 1
