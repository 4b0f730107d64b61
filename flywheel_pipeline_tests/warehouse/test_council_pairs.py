"""The council's preference pairs in the warehouse: landed records are ingested exactly once (bad
lines quarantined with their reason); the DPO dataset includes them only when
``include_council_pairs`` is on, only from trusted judges, redacted, with their provenance in the
asset metadata and the export's manifest; judges.json is published from judge_calibration."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import dagster as dg
import duckdb
import pytest

from flywheel_pipeline.core.council import (Answer, JudgeChoice, decide, pair_records, parse_request)
from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.defs.datasets.assets import preference_pairs
from flywheel_pipeline.defs.learn.council import council_judges
from flywheel_pipeline.defs.resources import WarehouseResource
from flywheel_pipeline.warehouse import schema
from flywheel_pipeline.warehouse.council import judge_trust
from flywheel_pipeline.warehouse.datasets import PairConfig, build_preference_pairs, export_jsonl, pair_provenance
from flywheel_pipeline.warehouse.ingest import ingest_source
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.service.test_council_route import GOOD, SPAM

PROMPT = [{"role": "system", "content": "You write short B2B outreach emails."},
          {"role": "user", "content": "Write to Dana at dana.smith@acme.example, VP Support at Acme."}]


def records(council_id: str, *, trusted: bool, org: str | None = "org-1") -> list[dict]:
    """The landing records one real verdict yields (GOOD beats SPAM by far)."""
    request = parse_request({"task_type": "cold_email", "messages": PROMPT, "models": ["good", "spam"]})
    answers = [Answer("good", GOOD, 10.0, 10, 10, Decimal("0.00003")), Answer("spam", SPAM, 12.0, 10, 10, None)]
    verdict = decide(request, answers, [], pair_margin=10)
    judge = JudgeChoice("heuristic:email_writing", trusted, "test")
    return pair_records(request, verdict, council_id=council_id, organization_id=org, judge=judge,
                        decided_at=datetime(2026, 12, 1, tzinfo=timezone.utc).isoformat())


def test_landed_pairs_are_ingested_once_and_bad_lines_quarantined(tmp_path):
    landing = tmp_path / "landing"
    good = records("c-1", trusted=True)
    assert len(good) == 1
    bad = [dict(good[0], pair_id="p-score", preferred_score="high"),
           dict(good[0], pair_id="p-margin", margin=-3),
           dict(good[0], pair_id="p-msgs", messages=[]),
           dict(good[0], pair_id="p-trust", judge_trusted="maybe"),
           dict(good[0], pair_id="p-when", decided_at="yesterday"),
           {k: v for k, v in good[0].items() if k != "preferred"} | {"pair_id": "p-text"}]
    write_jsonl(landing, "council_pairs", good + bad + [good[0]] + ["{not json"])
    con = connect(tmp_path / "wh.duckdb")
    result = ingest_source(con, landing, "council_pairs")
    assert (result.accepted, result.duplicates, result.quarantined) == (1, 1, 7)
    reasons = dict(con.execute("SELECT reason, count(*) FROM quarantine WHERE source = 'council_pairs' "
                               "GROUP BY 1").fetchall())
    assert reasons == {"invalid score: not a finite number": 1, "invalid margin: not a positive number": 1,
                       "invalid messages: not a non-empty array": 1,
                       "invalid judge_trusted: not true or false": 1,
                       "invalid decided_at: not an ISO 8601 timestamp": 1, "missing preferred": 1,
                       "malformed JSON": 1}
    # the same pair of another organization is its own record
    write_jsonl(landing, "council_pairs", records("c-1", trusted=True, org="org-2"))
    assert ingest_source(con, landing, "council_pairs").accepted == 1
    assert ingest_source(con, landing, "council_pairs").accepted == 0
    assert con.execute("SELECT organization_id, preferred_model, non_preferred_model, judge_trusted FROM council_pairs "
                       "ORDER BY 1").fetchall() == [("org-1", "good", "spam", True), ("org-2", "good", "spam", True)]
    con.close()


def test_an_older_warehouse_gets_the_council_pairs_table_in_place(tmp_path):
    path = tmp_path / "wh.duckdb"
    connect(path).close()
    old = duckdb.connect(str(path))
    old.execute("DROP TABLE council_pairs")
    old.execute("UPDATE schema_info SET value = ? WHERE key = 'schema_version'", [str(schema.COUNCIL_PAIRS_SINCE - 1)])
    old.close()
    con = connect(path)
    assert schema.COUNCIL_PAIRS_SINCE <= schema.SCHEMA_VERSION
    assert con.execute("SELECT count(*) FROM council_pairs").fetchone() == (0,)
    con.close()


@pytest.fixture
def warehouse_with_pairs(tmp_path):
    landing = tmp_path / "landing"
    write_jsonl(landing, "council_pairs", records("c-1", trusted=True) + records("c-2", trusted=False)
                + records("c-3", trusted=True, org="org-2"))
    con = connect(tmp_path / "wh.duckdb")
    assert ingest_source(con, landing, "council_pairs").accepted == 3
    return con


def test_the_dpo_dataset_takes_council_pairs_only_when_enabled_and_only_trusted(warehouse_with_pairs, tmp_path):
    con = warehouse_with_pairs
    off = build_preference_pairs(con, PairConfig())
    assert off["pairs"] == 0 and off["include_council_pairs"] is False and "council_pairs" not in off
    off_export = export_jsonl(con, tmp_path / "exports", ["dpo"], pair_provenance(con))
    assert sum(off_export.rows.values()) == 0

    on = build_preference_pairs(con, PairConfig(include_council_pairs=True, validation_fraction=0.0))
    assert on["pairs"] == 2 and on["council_pairs"] == 2 and on["council_pairs_untrusted_excluded"] == 1
    assert on["pairs_by_source"] == {"council": 2}
    rows = con.execute("SELECT source, judge, organization_id, split, preferred_score, non_preferred_score, margin, "
                       "system_prompt, user_prompt, preferred, non_preferred FROM preference_pairs ORDER BY 3"
                       ).fetchall()
    for source, judge, _, split, p, q, margin, system, user, preferred, non_preferred in rows:
        assert (source, judge, split) == ("council", "heuristic:email_writing", "train")
        assert 0 <= q < p <= 1 and margin == pytest.approx(p - q, abs=1e-6)  # judge points / 100
        assert system == PROMPT[0]["content"] and "[EMAIL]" in user and "acme.example" not in user  # redacted
        assert (preferred, non_preferred) == (GOOD, SPAM)
    assert [r[2] for r in rows] == ["org-1", "org-2"]
    # one organization's dataset takes that organization's pairs only
    one = build_preference_pairs(con, PairConfig(include_council_pairs=True, organization_id="org-2"))
    assert one["council_pairs"] == 1 and one["council_pairs_untrusted_excluded"] == 0

    build_preference_pairs(con, PairConfig(include_council_pairs=True, validation_fraction=0.0))
    provenance = pair_provenance(con)
    assert provenance == {"pairs_by_source": {"council": 2}, "council_pairs_by_judge": {"heuristic:email_writing": 2}}
    export = export_jsonl(con, tmp_path / "exports", ["dpo"], provenance)
    lines = [json.loads(line) for line in export.files["dpo.train.jsonl"].read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["preferred_output"] == [{"role": "assistant", "content": GOOD}]
    assert lines[0]["input"]["messages"][0] == PROMPT[0]
    manifest = json.loads((export.directory / "manifest.json").read_text())
    assert manifest["provenance"] == provenance
    con.close()


def test_the_preference_pairs_asset_reports_the_council_pairs_it_took(warehouse_with_pairs, tmp_path):
    path = str(warehouse_with_pairs.execute("PRAGMA database_list").fetchone()[2])
    warehouse_with_pairs.close()
    with dg.instance_for_test() as instance:
        result = dg.materialize([preference_pairs], instance=instance, resources={
            "warehouse": WarehouseResource(database=path)},
            run_config={"ops": {"preference_pairs": {"config": {"include_council_pairs": True}}}})
        assert result.success
        meta = result.asset_materializations_for_node("preference_pairs")[0].metadata
        assert meta["council_pairs"].value == 2 and meta["council_pairs_untrusted_excluded"].value == 1
        assert meta["pairs_by_source"].value == {"council": 2}
        default = dg.materialize([preference_pairs], instance=instance,
                                 resources={"warehouse": WarehouseResource(database=path)})
        meta = default.asset_materializations_for_node("preference_pairs")[0].metadata
        assert meta["include_council_pairs"].value is False and meta["dagster/row_count"].value == 0


def test_judges_json_is_published_from_judge_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "fw"))
    path = str(tmp_path / "wh.duckdb")
    con = connect(path)
    assert judge_trust(con) == {"judges": [], "reason": "judge_calibration has no rows"}  # calibration has not run
    for judge, task_type, auc, low, high, spearman, trusted in (
            ("heuristic:email_writing", "cold_email", 0.58, 0.53, 0.63, 0.1, True),
            ("heuristic:generic", "all", 0.5, 0.45, 0.55, 0.0, False)):
        con.execute("INSERT INTO judge_calibration BY NAME SELECT ? AS judge, '1' AS criteria_version, "
                    "'reply' AS metric, ? AS task_type, 900 AS n, 90 AS positives, 0.1 AS rate, ? AS auc, "
                    "0.02 AS auc_se, ? AS auc_low, ? AS auc_high, 0.95 AS interval_level, ? AS spearman, "
                    "0.01 AS spearman_p, 900 AS quality_n, true AS gated, ? AS trusted, now()::TIMESTAMP AS computed_at",
                    [judge, task_type, auc, low, high, spearman, trusted])
    con.close()
    with dg.instance_for_test() as instance:
        result = dg.materialize([council_judges], instance=instance,
                                resources={"warehouse": WarehouseResource(database=path)})
        assert result.success
        meta = result.asset_materializations_for_node("council_judges")[0].metadata
        assert meta["trusted"].value == ["heuristic:email_writing (cold_email)"]
    published = json.loads((tmp_path / "fw" / "judges.json").read_text())
    assert published["reason"] is None and len(published["judges"]) == 2
    assert published["judges"][0] == {"judge": "heuristic:email_writing", "metric": "reply", "task_type": "cold_email",
                                      "n": 900, "auc": 0.58, "auc_low": 0.53, "auc_high": 0.63, "spearman": 0.1,
                                      "trusted": True}


def test_the_council_pairs_asset_is_in_the_refresh_job_and_reports_them(tmp_path):
    from flywheel_pipeline.defs.ingest.assets import council_pairs
    from flywheel_pipeline.defs.ingest.automation import refresh_job
    from flywheel_pipeline.defs.resources import LandingZoneResource
    from flywheel_pipeline_tests.domains import assets_of

    # in the ingest group, as the code location loads it: the refresh job runs it
    assert dg.AssetKey("council_pairs") in {k for a in assets_of("ingest") if isinstance(a, dg.AssetsDefinition)
                                            for k in a.keys}
    assert refresh_job.selection == dg.AssetSelection.groups("ingest", "outcomes")
    write_jsonl(tmp_path / "landing", "council_pairs", records("c-1", trusted=True) + records("c-2", trusted=False))
    with dg.instance_for_test() as instance:
        result = dg.materialize([council_pairs], instance=instance, resources={
            "warehouse": WarehouseResource(database=str(tmp_path / "wh.duckdb")),
            "landing": LandingZoneResource(path=str(tmp_path / "landing"))})
        assert result.success
        meta = result.asset_materializations_for_node("council_pairs")[0].metadata
    assert meta["rows_accepted"].value == 2 and meta["dagster/row_count"].value == 2
    table = meta["pairs_by_task_and_judge"].value
    assert "heuristic:email_writing" in table and table.count("cold_email") == 2, table
