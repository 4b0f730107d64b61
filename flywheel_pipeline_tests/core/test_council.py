"""The council's pure rules: the judge trusted only as judge_calibration says, the cost cap
seating cheapest first, the strategies' tie-breaks, pairs only on a clear margin, the DPO prompt."""

from __future__ import annotations

from decimal import Decimal

import pytest

from flywheel_pipeline.core.catalog import endpoint, parse_catalog
from flywheel_pipeline.core.council import (Answer, CouncilError, NoAnswer, choose_judge, decide, default_models,
                                            first_number, normalized, parse_request, prompt_parts, seat_models)

CATALOG = parse_catalog("""
models:
  - {model_id: cheap, provider: openai, input_per_million: 0.1, output_per_million: 0.4, task_types: [cold_email]}
  - {model_id: mid, provider: together, input_per_million: 1, output_per_million: 2, task_types: [cold_email]}
  - {model_id: dear, provider: local, input_per_million: 10, output_per_million: 40, task_types: [cold_email],
     base_url: "http://127.0.0.1:9/v1", api_key_env: LOCAL_KEY}
  - {model_id: other, provider: openai, input_per_million: 0.01, output_per_million: 0.01, task_types: [lead_scoring]}
""", "test.yaml")
USER = [{"role": "user", "content": "Write a cold email to Dana at Acme about onboarding."}]


def request(**extra):
    return parse_request({"task_type": "cold_email", "messages": USER, **extra})


def test_endpoints_default_to_the_providers():
    assert endpoint(CATALOG.get("cheap")) == ("https://api.openai.com/v1", "OPENAI_API_KEY")
    assert endpoint(CATALOG.get("mid")) == ("https://api.together.xyz/v1", "TOGETHER_API_KEY")
    assert endpoint(CATALOG.get("dear")) == ("http://127.0.0.1:9/v1", "LOCAL_KEY")
    with pytest.raises(ValueError, match="api_key_env"):
        parse_catalog("models:\n  - {model_id: x, provider: p, input_per_million: 1, output_per_million: 1, "
                      "api_key_env: 'not a name'}\n", "bad.yaml")


def test_the_judge_is_trusted_only_as_calibration_says():
    row = {"judge": "heuristic:email_writing", "metric": "reply", "task_type": "cold_email", "n": 4000,
           "auc": 0.6, "auc_low": 0.55, "auc_high": 0.65, "trusted": True}
    assert choose_judge("cold_email", {"judges": [row]}).trusted
    assert choose_judge("follow_up", {"judges": [dict(row, task_type="all")]}).trusted  # an all-tasks row
    for calibration, words in [
            (None, "no judge calibration is published"),
            ({"judges": [], "reason": "the warehouse has no judge_calibration table"}, "no judge_calibration table"),
            ({"judges": [dict(row, trusted=False, auc_low=0.48)]}, "does not trust heuristic:email_writing"),
            ({"judges": [dict(row, task_type="follow_up")]}, "no row for heuristic:email_writing on cold_email"),
            ({"judges": [dict(row, judge="geval:email_writing@gpt-4o")]}, "trusted but not runnable by the council")]:
        choice = choose_judge("cold_email", calibration)
        assert not choice.trusted and words in choice.reason and "untrusted fallback" in choice.reason
        assert choice.name == "heuristic:email_writing"
    assert choose_judge("haiku", None).name == "heuristic:generic"  # an unknown task type, named as such
    # an LLM judge decides only where calibration trusts it
    llm = dict(row, judge="geval:email_writing@judge-llm")
    chosen = choose_judge("cold_email", {"judges": [llm]}, "judge-llm")
    assert (chosen.name, chosen.trusted, chosen.model_id) == ("geval:email_writing@judge-llm", True, "judge-llm")
    fallback = choose_judge("cold_email", {"judges": [row, dict(llm, trusted=False)]}, "judge-llm")
    assert (fallback.name, fallback.trusted, fallback.model_id) == ("heuristic:email_writing", True, None)
    assert "geval:email_writing@judge-llm is not trusted" in fallback.reason


def test_the_cost_cap_seats_the_cheapest_first_and_keeps_the_request_order():
    messages = request().messages
    seats, dropped = seat_models(CATALOG, ["dear", "mid", "cheap"], messages, 1000, Decimal("0.003"))
    assert [s.model_id for s in seats] == ["mid", "cheap"]  # in the request's order
    assert [d.model_id for d in dropped] == ["dear"] and "over the cost cap" in dropped[0].reason
    for s in seats:  # estimate = prompt tokens x input price + max_tokens x output price
        assert s.estimate_usd == (s.prompt_tokens * s.entry.input_per_million
                                  + 1000 * s.entry.output_per_million) / 10**6
    # judging each answer is part of its seat's cost
    judged, dropped = seat_models(CATALOG, ["mid", "cheap"], messages, 1000, Decimal("0.003"), Decimal("0.001"))
    assert [s.model_id for s in judged] == ["cheap"] and "judging the answer" in dropped[0].reason
    assert judged[0].estimate_usd == seats[1].estimate_usd + Decimal("0.001") and judged[0].judge_usd == Decimal("0.001")
    with pytest.raises(CouncilError) as refused:
        seat_models(CATALOG, ["dear"], messages, 1000, Decimal("0.003"))
    assert refused.value.reason == "over_cost_cap"
    with pytest.raises(CouncilError) as unknown:
        seat_models(CATALOG, ["cheap", "nope"], messages, 10, Decimal(1))
    assert unknown.value.reason == "unknown_model" and "nope" in unknown.value.detail
    assert default_models(CATALOG, "cold_email", 2, messages, 100) == ["cheap", "mid"]
    with pytest.raises(CouncilError):
        default_models(CATALOG, "haiku", 2, messages, 100)


def answer(model: str, text: str) -> Answer:
    return Answer(model, text, 5.0, 10, 10, None)


GOOD = ("Subject: Faster onboarding at Acme\n\nHi Dana,\n\nTeams like yours at 3 SaaS companies cut onboarding by 30% "
        "with our playbooks. I put two short examples together for Acme's support team in Berlin.\n\n"
        "Would you be open to a 15 minutes call next week?\n\nBest,\nSam")
WEAK = "Hello. We sell software. Contact us."


def test_judge_pairs_only_on_a_clear_margin():
    verdict = decide(request(), [answer("a", WEAK), answer("b", GOOD)], [], pair_margin=10)
    assert verdict.chosen["model_id"] == "b" and verdict.chosen["score_kind"] == "judge_score"
    assert len(verdict.pairs) == 1 and verdict.pairs[0].non_preferred.model_id == "a"
    margin = verdict.pairs[0].margin
    assert decide(request(), [answer("a", WEAK), answer("b", GOOD)], [], pair_margin=margin + 0.01).pairs == []
    # the same text twice is no preference, whatever the margin
    assert decide(request(), [answer("a", GOOD), answer("b", GOOD + "  ")], [], pair_margin=0.0001).pairs == []


def test_vote_breaks_ties_by_the_judge_and_average_needs_numbers():
    verdict = decide(request(strategy="vote"), [answer("a", WEAK), answer("b", GOOD)], [], pair_margin=10)
    assert verdict.chosen["model_id"] == "b" and verdict.chosen["score"] == 0.5  # a tie: the better judged
    scoring = parse_request({"task_type": "lead_scoring", "messages": USER, "strategy": "average"})
    with pytest.raises(NoAnswer) as none:
        decide(scoring, [answer("a", "no idea"), answer("b", "")], [], pair_margin=10)
    assert [f.reason for f in none.value.failed] == ["no number in the answer of a numeric task", "empty answer"]
    verdict = decide(scoring, [answer("a", "Score: 72.5/100"), answer("b", "67.5")], [], pair_margin=10)
    assert verdict.chosen["score"] == 70.0 and verdict.chosen["spread"] == pytest.approx(3.5355, abs=1e-4)
    assert first_number("score -3.5 of 10") == -3.5 and first_number("none") is None
    assert normalized("  Yes,   INTERESTED!! ") == "yes, interested"


def test_bad_requests_say_why():
    for payload, reason in [({"task_type": "cold_email", "messages": []}, "empty_messages"),
                            ({"task_type": "cold_email", "messages": USER, "strategy": "rank"}, "unknown_strategy"),
                            ({"task_type": "cold_email", "messages": USER, "strategy": "average"}, "not_numeric_task"),
                            ({"task_type": " ", "messages": USER}, "invalid_request"),
                            ({"task_type": "cold_email", "messages": USER, "max_tokens": 0}, "invalid_request"),
                            ({"task_type": "cold_email", "messages": USER, "max_cost_usd": -1}, "invalid_request"),
                            ("text", "invalid_request")]:
        with pytest.raises(CouncilError) as refused:
            parse_request(payload)
        assert refused.value.reason == reason, payload


def test_prompt_parts_for_the_dpo_prompt():
    assert prompt_parts([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]) == ("S", "U")
    assert prompt_parts([{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A"},
                         {"role": "user", "content": "U2"}]) == (None, "user: U1\n\nassistant: A\n\nuser: U2")
