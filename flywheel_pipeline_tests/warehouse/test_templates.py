"""Prompt templates: the render contract, semantic versions, storage (add/list/show through the CLI),
template arms in routing (sticky, independent of the model arms), the verdicts applied on the same
ramp as models, and template fields ingested from the sent-message log."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from flywheel_pipeline.cli import main
from flywheel_pipeline.core.routing import model_for_lead, template_for_lead
from flywheel_pipeline.core.templates import (LEAD_FIELDS, TemplateRefused, WordRange, check_template,
                                              length_instruction, render, sample_lead, with_length_instruction)
from flywheel_pipeline.core import landing as landing_zone
from flywheel_pipeline.routing import choose_model, load_routing
from flywheel_pipeline.warehouse import templates
from flywheel_pipeline.warehouse.experiments import TEMPLATE_LAYER, arm_statistics
from flywheel_pipeline.warehouse.outcome_drivers import message_features
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline.warehouse.template_routing import apply_template_verdicts, build_template_families
from flywheel_pipeline_tests.conftest import T0, message, run_pipeline, sg

GOOD = "Write to {{ first_name }}, {{ role }} at {{ company }} ({{ industry }}). Sign it {{ sender_name }}.\n"


def test_a_template_is_checked_against_the_lead_fields_and_rendered_in_a_sandbox():
    assert check_template(GOOD) == ("company", "first_name", "industry", "role", "sender_name")
    assert render(GOOD, sample_lead()).startswith("Write to Ada, vp_sales at Analytical Engines Ltd")
    # a field a lead does not have is named, also inside a branch that the sample lead would not take
    with pytest.raises(TemplateRefused) as refused:
        check_template("Hi {{ first_name }}{% if false %} {{ budget }}{% endif %} about {{ deal.size }}")
    assert refused.value.missing == ("budget", "deal") and "budget, deal" in str(refused.value)
    with pytest.raises(TemplateRefused, match="syntax error on line 1"):
        check_template("Hi {{ first_name ")
    with pytest.raises(TemplateRefused, match="sandbox refuses"):  # no way out of the sandbox
        check_template("{{ first_name.__class__.__mro__ }}")
    with pytest.raises(TemplateRefused, match="empty"):
        check_template("  \n")
    with pytest.raises(TemplateRefused) as missing:  # StrictUndefined at render time too
        render(GOOD, {"first_name": "Ada"})
    assert "company" in missing.value.missing
    assert set(LEAD_FIELDS) >= {"first_name", "company", "industry", "role"}


def test_the_length_instruction_is_written_once_and_read_back():
    once = with_length_instruction(GOOD, WordRange(50, 99), "(why)")
    assert length_instruction(render(once, sample_lead())) == WordRange(50, 99)
    twice = with_length_instruction(once, WordRange(0, 149), "(why not)")
    assert twice.count("Keep the body of the email") == 1 and length_instruction(twice) == WordRange(0, 149)
    assert "under 150 words" in twice and length_instruction(GOOD) is None
    check_template(twice)


def _cli(capsys, *argv):
    status = main(list(argv))
    out = capsys.readouterr()
    return status, out.out, out.err


def test_templates_add_list_show_and_the_version_rules(home, tmp_path, capsys):
    good, bad, other = tmp_path / "good.j2", tmp_path / "bad.j2", tmp_path / "other.j2"
    good.write_text(GOOD)
    bad.write_text("Hi {{ first_name }}, about {{ budget }} and {{ quota }}")
    other.write_text(GOOD.replace("Write to", "Write a short note to"))
    status, out, _ = _cli(capsys, "templates", "add", str(good), "--name", "intro", "--version", "1.0.0")
    assert status == 0 and "intro@1.0.0" in out and "champion" in out
    # refused at add time with the missing fields, on one line, nothing stored
    status, out, err = _cli(capsys, "templates", "add", str(bad), "--name", "intro", "--version", "1.1.0")
    assert status == 2 and err.count("\n") == 1 and "budget, quota" in err
    for version, reason in (("1.0.0", "already exists"), ("1.1", "not a semantic version"),
                            ("v1.2.0", "not a semantic version"), ("0.9.0", "must be greater than the latest 1.0.0")):
        status, _, err = _cli(capsys, "templates", "add", str(other), "--name", "intro", "--version", version)
        assert status == 2 and reason in err, (version, err)
    status, _, err = _cli(capsys, "templates", "add", str(other), "--name", "Intro!", "--version", "1.0.0")
    assert status == 2 and "template name" in err
    status, out, _ = _cli(capsys, "templates", "add", str(other), "--name", "intro", "--version", "1.1.0")
    assert status == 0 and "draft" in out  # a later version reaches leads only as a challenger
    status, out, _ = _cli(capsys, "templates", "list", "--json")
    listed = {(t["template_id"], t["version"]): t for t in json.loads(out)}
    assert listed[("intro", "1.0.0")]["status"] == "deployed" and listed[("intro", "1.1.0")]["status"] == "draft"
    status, out, _ = _cli(capsys, "templates", "show", "intro", "--version", "1.0.0")
    assert status == 0 and out.endswith(GOOD) and "status:         deployed" in out
    status, out, _ = _cli(capsys, "templates", "show", "intro")  # the latest
    assert "intro@1.1.0" in out and "Write a short note to" in out
    status, _, err = _cli(capsys, "templates", "show", "intro", "--version", "9.9.9")
    assert status == 1 and "versions: 1.0.0, 1.1.0" in err
    # immutable: the stored text never changed
    with connect(home / "warehouse.duckdb") as con:
        assert templates.get(con, "intro", "1.0.0").text == GOOD
    # the published routing table names the champion only (a draft routes nothing)
    family = load_routing()["template_families"]["templates-global-all"]
    assert [(a["template_version"], a["traffic_pct"]) for a in family["arms"]] == [("1.0.0", 100.0)]


def test_template_arms_are_sticky_per_lead_and_independent_of_the_model_arms(tmp_path):
    con = connect(tmp_path / "wh.duckdb")
    templates.add_template(con, template_id="intro", version="1.0.0", text=GOOD)
    templates.add_template(con, template_id="intro", version="1.1.0", text=GOOD + "P.S.\n", as_challenger_pct=10.0)
    families, rows = build_template_families(con)
    table = {"default_model": "base", "template_families": families, "families": {"flywheel-global-all": {
        "experiment_id": "model-exp", "arms": [
            {"model_id": "new", "version": "1.1.0", "ab_group": "challenger", "traffic_pct": 50.0},
            {"model_id": "old", "version": "1.0.0", "ab_group": "champion", "traffic_pct": 50.0}]}}}
    leads = [f"lead-{i}" for i in range(20_000)]
    picks = {lead: template_for_lead(table, lead, "org-1", "cold_email") for lead in leads}
    share = sum(p["template_ab_group"] == "challenger" for p in picks.values()) / len(leads)
    assert 0.09 < share < 0.11 and {p["template_version"] for p in picks.values()} == {"1.0.0", "1.1.0"}
    assert all(p["template_text"].endswith("P.S.\n") == (p["template_version"] == "1.1.0") for p in picks.values())
    assert picks == {lead: template_for_lead(table, lead, "org-1", "cold_email") for lead in leads}  # sticky
    # the two layers are independent: the template challenger gets half of each model arm's leads
    models = {lead: model_for_lead(table, lead, "org-1", "cold_email")["ab_group"] for lead in leads}
    in_challenger = [lead for lead in leads if picks[lead]["template_ab_group"] == "challenger"]
    assert 0.45 < sum(models[lead] == "challenger" for lead in in_challenger) / len(in_challenger) < 0.55
    # the ramp: raising the challenger to 50% keeps every lead it had
    templates.set_state(con, "intro@1.1.0", "ready", "challenger", 50.0)
    table["template_families"], _ = build_template_families(con)
    wider = {lead: template_for_lead(table, lead, "org-1", "cold_email") for lead in in_challenger}
    assert all(p["template_version"] == "1.1.0" for p in wider.values())
    answer = choose_model("lead-1", "org-1", "cold_email", table=table)  # the Python API and GET /route
    assert answer["model_id"] in ("new", "old") and answer["template_id"] == "intro"
    assert answer["template_allocation"].endswith("@challenger=50/champion=50")
    assert template_for_lead({"families": {}}, "lead-1", "org-1")["template_id"] is None
    con.close()


def _verdict(con, family, challenger, decision, final=False, at=None):
    con.execute("INSERT INTO ab_test_results (evaluated_at, family, challenger, champion, decision, reason, arm, "
                "final) VALUES (?, ?, ?, 'intro@1.0.0', ?, 'test', 'challenger', ?)",
                [at or datetime.now(), family, challenger, decision, final])


def test_template_verdicts_ramp_promote_and_roll_back_like_models(tmp_path):
    con = connect(tmp_path / "wh.duckdb")
    templates.add_template(con, template_id="intro", version="1.0.0", text=GOOD)
    templates.add_template(con, template_id="intro", version="1.1.0", text=GOOD + "A\n", as_challenger_pct=10.0)
    family, t0 = "templates-global-all", datetime(2026, 1, 1)
    _verdict(con, family, "intro@1.1.0", "continue", at=t0)
    assert apply_template_verdicts(con, (10.0, 50.0, 100.0)) == []
    _verdict(con, family, "intro@1.1.0", "promote", at=t0 + timedelta(days=1))
    assert [a.action for a in apply_template_verdicts(con, (10.0, 50.0, 100.0))] == ["rollout to 50%"]
    assert templates.challenger(con, "all").traffic_pct == 50.0
    _verdict(con, family, "intro@1.1.0", "promote", at=t0 + timedelta(days=2))
    assert [a.action for a in apply_template_verdicts(con, (10.0, 50.0, 100.0))] == ["promoted to champion"]
    assert templates.champion(con, "all").key == "intro@1.1.0" and templates.challenger(con, "all") is None
    assert templates.get(con, "intro", "1.0.0").status == "archived"
    assert apply_template_verdicts(con, (10.0, 50.0, 100.0)) == []  # acted on once
    templates.add_template(con, template_id="intro", version="1.2.0", text=GOOD + "B\n", as_challenger_pct=10.0)
    _verdict(con, family, "intro@1.2.0", "rollback", at=t0 + timedelta(days=3))
    assert [a.action for a in apply_template_verdicts(con, (10.0, 50.0, 100.0))] == ["rolled back"]
    assert templates.get(con, "intro", "1.2.0").ab_group == "rolled_back"
    families, _ = build_template_families(con)
    assert [a["template_version"] for a in families[family]["arms"]] == ["1.1.0"]
    con.close()


def test_template_fields_are_ingested_and_attributed(tmp_path, con):
    landing = tmp_path / "landing"
    meta = {"template_experiment_id": "e", "template_allocation": "e@challenger=50/champion=50"}
    records = [
        message("m-top", lead="lead-1", template_id="intro", template_version="1.1.0", metadata=meta),
        message("m-old", lead="lead-2", metadata={"prompt_template": "legacy", "prompt_version": "2"}),
        message("m-both", lead="lead-3", template_id="intro", template_version="1.0.0",
                metadata={**meta, "prompt_template": "legacy", "prompt_version": "2"}),
        message("m-none", lead="lead-4")]
    events = [sg(r["message_id"], "delivered", T0 + timedelta(seconds=5)) for r in records]
    events.append(sg("m-top", "open", T0 + timedelta(hours=1)))
    landing_zone.write_jsonl(landing, "messages", records)
    landing_zone.write_jsonl(landing, "sendgrid", events)
    run_pipeline(con, landing)
    stored = dict((r[0], r[1:]) for r in con.execute(
        "SELECT message_id, template_id, template_version FROM messages").fetchall())
    assert stored == {"m-top": ("intro", "1.1.0"), "m-old": ("legacy", "2"), "m-both": ("intro", "1.0.0"),
                      "m-none": (None, None)}
    features = {row[4] for row in message_features(con)}  # model_id column is 4th; check the template ones
    by_template = {(row[5], row[6]) for row in message_features(con)}
    assert by_template == {("intro", "1.1.0"), ("legacy", "2"), ("intro", "1.0.0"), ("unknown", "unknown")}
    assert features == {"model-a"}
    stats = arm_statistics(con, {"challenger": "intro@1.1.0", "champion": "intro@1.0.0"},
                           "e@challenger=50/champion=50", TEMPLATE_LAYER)
    assert stats["reply_rate"]["challenger"].n == 1 and stats["reply_rate"]["champion"].n == 1
