"""Unit tests of the pure core: policy, reply understanding, landing zone, simulator."""

from __future__ import annotations

import os
import re
from datetime import date

import pytest
from pydantic import ValidationError

from flywheel_pipeline.core import landing as landing_zone
from flywheel_pipeline.core.label_policy import (DEFAULT_STAGE_SCORES, STAGES, LabelPolicy, deepest_stage,
                                                 score_stage)
from flywheel_pipeline.core.reply_classifier import RuleBasedReplyClassifier, auto_reply_reason
from flywheel_pipeline.simulator import SimConfig, simulate
from flywheel_pipeline_tests.conftest import REPO

DOCS = REPO / "docs" / "labelling.md"


# ---- policy -----------------------------------------------------------------------------

@pytest.mark.parametrize("stage, value, expected", [
    ("deal_closed", 50_000, 1.0), ("deal_closed", 80_000, 1.0), ("deal_closed", 10_000, 0.92),
    ("deal_closed", None, 0.9), ("meeting_completed", None, 0.8), ("positive_reply", None, 0.6),
    ("opened", None, 0.2), ("bounced", None, 0.1), ("sent", None, 0.0)])
def test_reference_scores_reproduce_the_design_table(stage, value, expected):
    assert score_stage(LabelPolicy(), stage, deal_value=value) == pytest.approx(expected)


def test_negative_outcome_scores_zero():
    assert score_stage(LabelPolicy(), "positive_reply", negative=True) == 0.0


def test_deepest_stage_prefers_the_deepest_evidence():
    flags = dict.fromkeys(["delivered", "bounced", "opened", "clicked", "replied", "positive_reply",
                           "meeting_booked", "meeting_completed", "deal_closed"], False)
    assert deepest_stage(**flags) == "sent"
    assert deepest_stage(**{**flags, "opened": True, "meeting_booked": True}) == "meeting_booked"


@pytest.mark.parametrize("kwargs, message", [
    ({"stage_scores": {"opened": 0.2}}, "missing"),
    ({"stage_scores": dict(DEFAULT_STAGE_SCORES, opened=1.5)}, "must be in"),
    ({"stage_scores": dict(DEFAULT_STAGE_SCORES, deal_closed=0.95)}, "must not exceed"),
    ({"maturity_days": -1}, "greater than or equal"),
    ({"unknown_knob": 1}, "Extra inputs"),
])
def test_policy_rejects_bad_configuration_with_a_clear_message(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        LabelPolicy(**kwargs)


def test_policy_fingerprint_changes_with_any_number():
    assert LabelPolicy().fingerprint() == LabelPolicy().fingerprint()
    assert LabelPolicy().fingerprint() != LabelPolicy(maturity_days=15).fingerprint()


def test_docs_table_matches_the_default_policy():
    """docs/labelling.md documents every stage score; keep it in step with the code."""
    text = DOCS.read_text()
    documented = dict(re.findall(r"^\| `(\w+)` \| ([0-9.]+) \|", text, flags=re.MULTILINE))
    assert set(documented) == set(STAGES)
    assert {k: float(v) for k, v in documented.items()} == DEFAULT_STAGE_SCORES
    policy = LabelPolicy()
    for name in ("maturity_days", "scanner_click_window_s", "attribution_window_days", "deal_value_cap"):
        assert re.search(rf"`{name}`[^\n]*\b{getattr(policy, name):g}\b", text), name


# ---- replies ----------------------------------------------------------------------------

@pytest.mark.parametrize("headers, subject, expected", [
    ({"Auto-Submitted": "auto-replied"}, None, "Auto-Submitted: auto-replied"),
    ({"auto-submitted": "auto-generated"}, None, "Auto-Submitted: auto-generated"),
    ({"Auto-Submitted": "no"}, None, None),
    ({"X-Autoreply": "yes"}, None, "x-autoreply: yes"),
    ({"X-Autorespond": "1"}, None, "x-autorespond: 1"),
    ({"Precedence": "auto_reply"}, None, "Precedence: auto_reply"),
    ({"Precedence": "bulk"}, None, "Precedence: bulk"),
    ({"Precedence": "junk"}, None, "Precedence: junk"),
    ({"Precedence": "first-class"}, None, None),
    ({}, "Automatic reply: Your message", "out-of-office subject"),
    ({}, "Out of Office until Monday", "out-of-office subject"),
    (None, "Re: quick question", None),
])
def test_auto_reply_detection(headers, subject, expected):
    assert auto_reply_reason(headers, subject) == expected


@pytest.mark.parametrize("text, sentiment, intent", [
    ("Sounds great - let's set up a call next week.", "positive", "meeting_request"),
    ("Interested. Can you send pricing?", "positive", "interested"),
    ("Not interested, thanks.", "negative", "not_interested"),
    ("Please remove me from your list", "negative", "unsubscribe_request"),
    ("Not right now, maybe next quarter.", "neutral", "not_now"),
    ("How does this compare to our CRM?", "neutral", "question"),
    ("ok", "neutral", "other"),
    ("No thanks.\n\nOn Mon, Mar 2, 2026 at 9:00 AM Jordan wrote:\n> Interested in a call? let's talk",
     "negative", "not_interested"),
])
def test_rule_based_classifier(text, sentiment, intent):
    result = RuleBasedReplyClassifier().classify(subject="Re: hi", text=text, headers={})
    assert (result.sentiment, result.intent, result.is_auto_reply) == (sentiment, intent, False)


def test_classifier_marks_auto_replies_neutral():
    result = RuleBasedReplyClassifier().classify(subject="Re", text="Sounds great!", headers={"X-Autoreply": "y"})
    assert (result.is_auto_reply, result.intent, result.sentiment) == (True, "auto_reply", "neutral")


# ---- landing zone -----------------------------------------------------------------------

def test_write_jsonl_is_atomic_and_immutable(tmp_path):
    path = landing_zone.write_jsonl(tmp_path, "crm", [{"a": 1}, "raw line"], name="x.jsonl")
    assert path.read_text() == '{"a":1}\nraw line\n'
    assert os.listdir(path.parent) == ["x.jsonl"]  # no temporary file left behind
    with pytest.raises(FileExistsError):
        landing_zone.write_jsonl(tmp_path, "crm", [{"a": 2}], name="x.jsonl")
    with pytest.raises(ValueError, match="unknown landing source"):
        landing_zone.write_jsonl(tmp_path, "salesforce", [{}])
    with pytest.raises(ValueError, match="one line"):
        landing_zone.write_jsonl(tmp_path, "crm", ["two\nlines"])


def test_listing_ignores_temporary_files_and_fingerprint_tracks_new_files(tmp_path):
    (tmp_path / "sendgrid").mkdir()
    (tmp_path / "sendgrid" / ".partial.jsonl.tmp").write_text("{}")
    before = landing_zone.fingerprint(tmp_path)
    assert before["sendgrid"].startswith("0:") and landing_zone.list_files(tmp_path, "sendgrid") == []
    landing_zone.write_jsonl(tmp_path, "sendgrid", [{}])
    after = landing_zone.fingerprint(tmp_path)
    assert after["sendgrid"].startswith("1:") and after["crm"] == before["crm"]


# ---- simulator --------------------------------------------------------------------------

def _sim(tmp_path, name, **kw):
    cfg = SimConfig(seed=5, days=10, end=date(2026, 5, 1), organizations=1, leads_per_org=50,
                    messages_per_day=20, **kw)
    return simulate(tmp_path / name, cfg), tmp_path / name


def test_simulator_is_deterministic_and_extends_the_same_world(tmp_path):
    first, a = _sim(tmp_path, "a")
    second, b = _sim(tmp_path, "b")
    assert first.messages == 200 and first.sendgrid_lines > 3 * first.messages
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.jsonl"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.jsonl"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    # writing a longer world into `a` keeps every existing file and adds later days only
    longer = simulate(a, SimConfig(seed=5, days=12, end=date(2026, 5, 3), organizations=1, leads_per_org=50,
                                   messages_per_day=20))
    assert (longer.days_written, longer.days_skipped) == (2, 10)


def test_simulator_produces_the_provider_quirks_the_pipeline_must_handle(tmp_path):
    _, root = _sim(tmp_path, "w", malformed_rate=0.01)
    import json
    events, malformed = [], 0
    for path in (root / "sendgrid").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                malformed += 1
    ids = [e["sg_event_id"] for e in events]
    assert 2.0 < len(ids) / len(set(ids)) < 4.0  # about three copies per event
    assert any(e.get("sg_machine_open") for e in events)
    assert malformed > 0
    replies = [json.loads(line) for p in (root / "replies").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert any("Auto-Submitted" in r["headers"] or "X-Autoreply" in r["headers"] or "Precedence" in r["headers"]
               for r in replies)
