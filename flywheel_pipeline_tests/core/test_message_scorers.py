"""The heuristic message scorers: one per task family, weights that add up, deterministic,
sensible orderings, an unknown task type scored by the generic scorer under its own name."""

from __future__ import annotations

import math
import time

import pytest

from flywheel_pipeline.core.message_scorers import SCORERS, TASK_FAMILIES, MessageText, judge_message, scorer_for

CONTEXT = {"first_name": "Dana", "company": "Acme", "industry": "logistics", "role": "vp_sales"}
GOOD = ("Hi Dana,\n\nAcme's logistics team ships 40% of orders same day; teams like yours use our analytics to see "
        "which outreach books meetings, and one cut its follow-up time by 3 hours a week. Our VP of sales "
        "worked with Northwind on exactly this problem last quarter and can walk you through the numbers, "
        "the setup and what changed in their pipeline after a month.\n\nWould you be open to a 15 minutes "
        "call next week?\n\nBest,\nJordan")
BAD = "ACT NOW!! FREE demo, guaranteed results, click here https://x.example/a https://x.example/b https://x.example/c"


def test_every_scorer_weighs_its_dimensions_to_one_and_every_family_has_a_scorer():
    for scorer in SCORERS.values():
        assert math.isclose(sum(scorer.weights.values()), 1.0), scorer.family
        dims = scorer.dimensions(MessageText("x", "s", "body text here.", "prompt", CONTEXT))
        assert set(dims) == set(scorer.weights), scorer.family
    assert set(TASK_FAMILIES.values()) | {"generic"} == set(SCORERS)
    assert len(SCORERS) == 8  # AI-GYM's seven task families and the generic fallback


def test_an_outreach_email_scores_higher_when_personal_specific_and_asking():
    good = judge_message(MessageText("cold_email", "Acme: a question", GOOD, "", CONTEXT))
    bad = judge_message(MessageText("cold_email", "HELLO", BAD, "", CONTEXT))
    assert good.judge == bad.judge == "heuristic:email_writing"
    assert 0 <= bad.score < good.score <= 100
    assert good.dimensions["clear_ask"] == 1 and good.dimensions["personalization"] > 0.5
    assert bad.dimensions["spam_free"] == 0
    # the same text gives the same judgement
    assert judge_message(MessageText("cold_email", "Acme: a question", GOOD, "", CONTEXT)) == good


@pytest.mark.parametrize("task_type,family", [("follow_up", "email_writing"), ("reply", "conversation_response"),
                                              ("data_extraction", "data_extraction"), ("Cold_Email ", "email_writing"),
                                              ("poetry", "generic"), ("", "generic"), (None, "generic")])
def test_task_types_map_to_their_family_and_unknown_ones_to_the_generic_scorer(task_type, family):
    assert scorer_for(task_type).family == family


def test_the_extraction_scorer_rewards_valid_json():
    valid = judge_message(MessageText("data_extraction", body='{"name": "Dana", "company": "Acme", "size": 40}'))
    prose = judge_message(MessageText("data_extraction", body="The name is Dana and the company is Acme."))
    assert valid.score > prose.score and valid.dimensions["valid_json"] == 1 and prose.dimensions["valid_json"] == 0


def test_scoring_is_fast_enough_to_judge_every_message():
    message = MessageText("cold_email", "Acme: a question", GOOD, "Write a cold email to {{first_name}}", CONTEXT)
    start = time.perf_counter()
    for _ in range(2_000):
        judge_message(message)
    assert time.perf_counter() - start < 10  # thousands a second on a quiet core; generous for a busy CI
