"""POST /council over real HTTP on 127.0.0.1: the council's models answer from a local
OpenAI-compatible server (several named models answering differently, some slow or failing),
the judge picks, the verdict's preference pair lands and ingestion stores it; every bad input is
a 422 with its reason; all models failing is a 503 with Retry-After."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import pytest

from flywheel_pipeline.service.app import create_app
from flywheel_pipeline.warehouse.council import publish_judge_trust
from flywheel_pipeline.warehouse.ingest import ingest_source
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.fakes.http import serve_app
from flywheel_pipeline_tests.fakes.openai_server import FakeOpenAI, serve
from flywheel_pipeline_tests.service.test_service import KEYS, landed, settings_for

ONE = {"Authorization": "Bearer key-one"}
KEY_ENV = "FLYWHEEL_TEST_COUNCIL_KEY"
PROMPT = [{"role": "system", "content": "You write short B2B outreach emails."},
          {"role": "user", "content": "Write a cold email to Dana, VP Support at Acme (SaaS, Berlin), about our "
                                      "onboarding playbooks."}]
GOOD = ("Subject: Faster onboarding for Acme support\n\nHi Dana,\n\nI saw Acme is hiring 12 support engineers in "
        "Berlin this quarter. Support teams at similar SaaS companies cut their onboarding time by 30% with our "
        "playbooks, and I put together two short examples that match your setup.\n\nWould you be open to a 15 "
        "minutes call next week to see whether it fits?\n\nBest,\nSam")
SPAM = ("FREE offer!!! Act now, limited time, 100% GUARANTEED results, click here http://a.example "
        "http://b.example http://c.example")
# (model_id, input $/M, output $/M, task types)
MODELS = [("good-writer", "1.00", "2.00", "cold_email, council_demo"),
          ("spam-writer", "0.50", "1.00", "cold_email, council_demo"),
          ("slow-writer", "0.10", "0.10", "cold_email"),
          ("broken-writer", "0.10", "0.10", "cold_email"),
          ("pricey-writer", "900", "900", "cold_email, council_demo"),
          ("score-a", "0.1", "0.1", "lead_scoring"), ("score-b", "0.1", "0.1", "lead_scoring"),
          ("score-c", "0.1", "0.1", "lead_scoring"), ("vague-scorer", "0.1", "0.1", "lead_scoring"),
          ("plain-1", "0.1", "0.1", "council_demo"), ("plain-2", "0.2", "0.2", "council_demo"),
          ("judge-llm", "1.00", "4.00", "")]


def write_catalog(home, base_url: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    lines = ["models:"]
    for model_id, inp, out, tasks in MODELS:
        lines += [f"  - model_id: {model_id}", "    provider: local", f"    input_per_million: {inp}",
                  f"    output_per_million: {out}", f"    task_types: [{tasks}]", f"    base_url: {base_url}",
                  f"    api_key_env: {KEY_ENV}", "    capabilities: [chat]"]
    (home / "catalog.yaml").write_text("\n".join(lines) + "\n")


def trust_email_judge(home, tmp_path, trusted: bool = True, judge: str = "heuristic:email_writing") -> None:
    """Publish judges.json as the council_judges asset does, from a judge_calibration table."""
    con = connect(tmp_path / "calibration.duckdb")
    con.execute("INSERT INTO judge_calibration BY NAME SELECT ? AS judge, '1' AS criteria_version, 'reply' AS metric, "
                "'cold_email' AS task_type, 5000 AS n, 400 AS positives, 0.08 AS rate, 0.61 AS auc, 0.015 AS auc_se, "
                "? AS auc_low, 0.64 AS auc_high, 0.95 AS interval_level, 0.21 AS spearman, 0.001 AS spearman_p, "
                "5000 AS quality_n, true AS gated, ? AS trusted, now()::TIMESTAMP AS computed_at",
                [judge, 0.58 if trusted else 0.47, trusted])
    publish_judge_trust(con, home / "judges.json")
    con.close()


@pytest.fixture
def fake():
    fake = FakeOpenAI()
    fake.answers.update({"good-writer": GOOD, "spam-writer": SPAM, "slow-writer": GOOD, "broken-writer": GOOD,
                         "pricey-writer": GOOD, "score-a": "Score: 80", "score-b": "80", "score-c": "40 - weak fit",
                         "vague-scorer": "hard to say", "plain-1": "Yes, interested.", "plain-2": "yes,  Interested!"})
    with serve(fake) as base:
        yield fake, base


@pytest.fixture
def council(tmp_path, fake, monkeypatch):
    """(post, home, fake): POST /council against a running service whose catalog names the fakes."""
    monkeypatch.setenv(KEY_ENV, "sk-local-test")
    home = tmp_path / "fw"
    write_catalog(home, fake[1])
    settings = settings_for(home, FLYWHEEL_API_KEYS=KEYS, FLYWHEEL_COUNCIL_TIMEOUT_S="5")
    with serve_app(create_app(settings)) as base, httpx.Client(base_url=base, headers=ONE, timeout=30) as http:
        yield http, home, fake[0]


def test_the_council_chooses_the_better_answer_and_the_pair_is_stored(council, tmp_path):
    http, home, fake = council
    trust_email_judge(home, tmp_path)
    r = http.post("/council", json={"task_type": "cold_email", "messages": PROMPT,
                                    "models": ["spam-writer", "good-writer"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["chosen"]["model_id"] == "good-writer" and body["chosen"]["text"] == GOOD
    scores = {c["model_id"]: c["score"] for c in body["candidates"]}
    assert body["chosen"]["score"] == scores["good-writer"] > scores["spam-writer"] + 10
    assert body["judge"]["name"] == "heuristic:email_writing" and body["judge"]["trusted"] is True
    assert "AUC 0.610 [0.580, 0.640]" in body["judge"]["reason"]
    # both models were asked with the request's messages; the cost is the reported usage at catalog prices
    asked = sorted(c["model"] for c in fake.chat_calls)
    assert asked == ["good-writer", "spam-writer"] and all(c["messages"] == PROMPT for c in fake.chat_calls)
    cost = {c["model_id"]: c["cost_usd"] for c in body["candidates"]}
    assert cost == {"good-writer": pytest.approx(10 * 1e-6 + 10 * 2e-6),
                    "spam-writer": pytest.approx(10 * 0.5e-6 + 10 * 1e-6)}
    assert body["cost_usd"] == pytest.approx(sum(cost.values()))
    assert all(c["latency_ms"] > 0 for c in body["candidates"]) and body["failed"] == []
    assert body["pairs_stored"] == 1  # stored: see the next test


def test_a_landed_pair_is_ingested_with_its_provenance(tmp_path, fake, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-local-test")
    home = tmp_path / "fw"
    write_catalog(home, fake[1])
    trust_email_judge(home, tmp_path)
    with serve_app(create_app(settings_for(home, FLYWHEEL_API_KEYS=KEYS))) as base:
        r = httpx.post(f"{base}/council", headers=ONE, timeout=30,
                       json={"task_type": "cold_email", "messages": PROMPT, "models": ["good-writer", "spam-writer"]})
        assert r.status_code == 200, r.text
        council_id = r.json()["council_id"]
        # a near-tie (the same answer twice) is no clear preference: no pair
        fake[0].answers["spam-writer"] = GOOD
        r = httpx.post(f"{base}/council", headers=ONE, timeout=30,
                       json={"task_type": "cold_email", "messages": PROMPT, "models": ["good-writer", "spam-writer"]})
        assert r.json()["pairs_stored"] == 0
    records = landed(home, "council_pairs")
    assert len(records) == 1
    pair = records[0]
    assert (pair["council_id"], pair["organization_id"], pair["preferred_model"], pair["non_preferred_model"]) == (
        council_id, "org-1", "good-writer", "spam-writer")
    assert pair["judge"] == "heuristic:email_writing" and pair["judge_trusted"] is True and pair["margin"] >= 10
    con = connect(tmp_path / "wh.duckdb")
    result = ingest_source(con, home / "landing", "council_pairs")
    assert (result.accepted, result.quarantined) == (1, 0)
    row = con.execute("SELECT organization_id, task_type, preferred, non_preferred, judge_trusted, "
                      "json_array_length(messages) FROM council_pairs").fetchall()
    assert row == [("org-1", "cold_email", GOOD, SPAM, True, 2)]
    # ingesting again takes nothing new (exactly once)
    assert ingest_source(con, home / "landing", "council_pairs").accepted == 0
    con.close()


def test_a_model_that_times_out_or_errors_is_named_and_the_others_answer(council):
    http, _, fake = council
    fake.chat_delays["slow-writer"] = 3.0
    fake.chat_errors["broken-writer"] = 500
    started = time.monotonic()
    r = http.post("/council", json={"task_type": "cold_email", "messages": PROMPT, "timeout_s": 0.5,
                                    "models": ["slow-writer", "good-writer", "broken-writer"]})
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["chosen"]["model_id"] == "good-writer"
    assert [c["model_id"] for c in body["candidates"]] == ["good-writer"]
    failed = {f["model_id"]: f["reason"] for f in body["failed"]}
    assert failed["slow-writer"] == "timed out after 0.5s"
    assert "HTTP 500" in failed["broken-writer"]
    assert elapsed < 2.5  # the slow model was not waited for
    assert body["judge"]["trusted"] is False and "no judge calibration is published" in body["judge"]["reason"]


def test_every_model_failing_is_a_503_with_retry_after(council):
    http, _, fake = council
    fake.chat_errors.update({"good-writer": 502, "spam-writer": 429})
    r = http.post("/council", json={"task_type": "cold_email", "messages": PROMPT,
                                    "models": ["good-writer", "spam-writer"]})
    assert r.status_code == 503 and r.json()["error"] == "council_unavailable"
    assert r.headers["Retry-After"] == "30"
    assert "good-writer: the provider answered HTTP 502" in r.json()["detail"]
    assert "spam-writer: the provider answered HTTP 429" in r.json()["detail"]


def test_a_model_without_its_key_fails_by_name(council, monkeypatch):
    http, _, _ = council
    monkeypatch.delenv(KEY_ENV)
    r = http.post("/council", json={"task_type": "cold_email", "messages": PROMPT, "models": ["good-writer"]})
    assert r.status_code == 503 and f"no API key: set {KEY_ENV}" in r.json()["detail"]


def test_the_cost_cap_drops_what_would_exceed_it_before_calling(council):
    http, _, fake = council
    r = http.post("/council", json={"task_type": "cold_email", "messages": PROMPT, "max_tokens": 200,
                                    "models": ["good-writer", "pricey-writer", "spam-writer"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["model_id"] for d in body["dropped"]] == ["pricey-writer"]
    assert "over the cost cap" in body["dropped"][0]["reason"] and "$0.05" in body["dropped"][0]["reason"]
    assert "pricey-writer" not in {c["model"] for c in fake.chat_calls}  # never called
    assert body["cost_estimate_usd"] <= body["cost_cap_usd"] == 0.05
    # the estimate: prompt tokens x input price + max_tokens x output price, within the cap
    good = next(c for c in body["candidates"] if c["model_id"] == "good-writer")
    assert good["cost_usd"] == pytest.approx(float(Decimal(10 * 1 + 10 * 2) / 10**6))
    # a cap nothing fits under is refused before any call
    calls = len(fake.chat_calls)
    r = http.post("/council", json={"task_type": "cold_email", "messages": PROMPT, "models": ["pricey-writer"]})
    assert (r.status_code, r.json()["error"]) == (422, "over_cost_cap")
    r = http.post("/council", json={"task_type": "cold_email", "messages": PROMPT, "models": ["good-writer"],
                                    "max_tokens": 1000, "max_cost_usd": 0.000001})
    assert (r.status_code, r.json()["error"]) == (422, "over_cost_cap")
    assert len(fake.chat_calls) == calls


def test_vote_takes_the_answer_most_models_give(council):
    http, _, _ = council
    r = http.post("/council", json={"task_type": "lead_scoring", "strategy": "vote", "messages": PROMPT,
                                    "models": ["score-a", "score-b", "score-c"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["chosen"]["model_id"] in ("score-a", "score-b")
    assert body["chosen"]["score"] == pytest.approx(2 / 3, abs=1e-4) and body["chosen"]["score_kind"] == "vote_share"
    assert body["votes"][0] == {"answer": 80.0, "models": ["score-a", "score-b"], "count": 2}
    # text answers are compared normalized (case, spaces, edge punctuation)
    r = http.post("/council", json={"task_type": "council_demo", "strategy": "vote", "messages": PROMPT,
                                    "models": ["plain-1", "plain-2", "spam-writer"]})
    assert r.status_code == 200, r.text
    assert r.json()["votes"][0]["models"] == ["plain-1", "plain-2"]


def test_average_means_the_numbers_and_names_an_answer_without_one(council):
    http, _, _ = council
    r = http.post("/council", json={"task_type": "lead_scoring", "strategy": "average", "messages": PROMPT,
                                    "models": ["score-a", "score-c", "vague-scorer"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["chosen"]["model_id"] == "average" and body["chosen"]["score"] == pytest.approx(60.0)
    assert body["chosen"]["text"] == "60" and body["chosen"]["models"] == ["score-a", "score-c"]
    assert {c["model_id"]: c["value"] for c in body["candidates"]} == {"score-a": 80.0, "score-c": 40.0}
    assert body["failed"][0]["model_id"] == "vague-scorer" and "no number" in body["failed"][0]["reason"]
    assert body["judge"] is None and body["pairs_stored"] == 0


def test_the_catalog_default_seats_the_cheapest_models_of_the_task_type(council):
    http, _, fake = council
    r = http.post("/council", json={"task_type": "council_demo", "messages": PROMPT})
    assert r.status_code == 200, r.text
    # FLYWHEEL_COUNCIL_MODELS (3) cheapest that list council_demo: plain-1, plain-2, spam-writer
    assert sorted(c["model"] for c in fake.chat_calls) == ["plain-1", "plain-2", "spam-writer"]


def test_every_bad_input_is_refused_with_its_reason(council):
    http, _, fake = council
    cases = {  # name: (body, status, reason, words in the detail)
        "unknown model": ({"task_type": "cold_email", "messages": PROMPT, "models": ["good-writer", "gpt-9"]},
                          422, "unknown_model", "gpt-9"),
        "empty messages": ({"task_type": "cold_email", "messages": []}, 422, "empty_messages", "messages"),
        "no messages": ({"task_type": "cold_email"}, 422, "empty_messages", "messages"),
        "no user message": ({"task_type": "cold_email", "messages": PROMPT[:1]}, 422, "empty_messages", "user"),
        "unknown strategy": ({"task_type": "cold_email", "messages": PROMPT, "strategy": "best"}, 422,
                             "unknown_strategy", "judge, vote, average"),
        "average of text": ({"task_type": "cold_email", "messages": PROMPT, "strategy": "average"}, 422,
                            "not_numeric_task", "lead_scoring"),
        "unknown task type, no models": ({"task_type": "haiku", "messages": PROMPT}, 422, "unknown_task_type",
                                         "haiku"),
        "empty models": ({"task_type": "cold_email", "messages": PROMPT, "models": []}, 422, "invalid_request",
                         "models"),
        "a model twice": ({"task_type": "cold_email", "messages": PROMPT, "models": ["good-writer"] * 2}, 422,
                          "invalid_request", "twice"),
        "bad role": ({"task_type": "cold_email", "messages": [{"role": "robot", "content": "hi"}]}, 422,
                     "invalid_request", "role"),
        "unknown field": ({"task_type": "cold_email", "messages": PROMPT, "temperature": 2}, 422,
                          "invalid_request", "temperature"),
        "not an object": ([1, 2], 422, "invalid_request", "object"),
    }
    for name, (body, status, reason, words) in cases.items():
        r = http.post("/council", json=body)
        assert (r.status_code, r.json()["error"]) == (status, reason), (name, r.text)
        assert words in r.json()["detail"], (name, r.text)
    assert fake.chat_calls == []  # nothing was asked for a refused request
    r = http.post("/council", json={"task_type": "cold_email", "messages": PROMPT}, headers={"Authorization": ""})
    assert (r.status_code, r.json()["error"]) == (401, "unauthorized")


def test_the_route_is_switchable_needs_a_key_and_says_when_the_catalog_is_broken(tmp_path, fake, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-local-test")
    assert "council" in settings_for(tmp_path).unverified_sources()
    assert "council" not in settings_for(tmp_path, FLYWHEEL_API_KEYS=KEYS).unverified_sources()
    off = settings_for(tmp_path, FLYWHEEL_API_KEYS=KEYS, FLYWHEEL_DISABLED_ROUTES="council")
    body = {"task_type": "cold_email", "messages": PROMPT, "models": ["good-writer"]}
    with serve_app(create_app(off)) as base:
        r = httpx.post(f"{base}/council", json=body, headers=ONE)
        assert (r.status_code, r.json()["error"]) == (404, "not_found")
    home = tmp_path / "fw"
    write_catalog(home, fake[1])
    with serve_app(create_app(settings_for(home, FLYWHEEL_API_KEYS=KEYS))) as base:
        assert httpx.post(f"{base}/council", json=body, headers=ONE, timeout=30).status_code == 200
        (home / "catalog.yaml").write_text("models:\n  - {model_id: good-writer, input_per_million: -1}\n")
        r = httpx.post(f"{base}/council", json=body, headers=ONE, timeout=30)
        assert (r.status_code, r.json()["error"]) == (503, "catalog_invalid") and "good-writer" in r.json()["detail"]


def test_a_trusted_llm_judge_decides_through_g_eval(tmp_path, fake, monkeypatch):
    """With FLYWHEEL_COUNCIL_LLM_JUDGE and judge_calibration trusting geval:<family>@<model>, G-Eval
    (deepeval over the openai SDK, JSON mode) scores the answers; its verdict wins over the
    heuristic's, it is costed in the cap, and a failing or untrusted LLM judge hands over to the
    heuristic, said in the answer."""
    pytest.importorskip("deepeval", reason="the G-Eval judge is the optional extra [judge]")
    monkeypatch.setenv(KEY_ENV, "sk-local-test")
    server, base_url = fake
    server.judge_scorer = lambda text: 9 if "FREE" in text else 2  # this judge disagrees with the heuristic
    home = tmp_path / "fw"
    write_catalog(home, base_url)
    body = {"task_type": "cold_email", "messages": PROMPT, "models": ["good-writer", "spam-writer"]}
    settings = settings_for(home, FLYWHEEL_API_KEYS=KEYS, FLYWHEEL_COUNCIL_LLM_JUDGE="judge-llm")
    with serve_app(create_app(settings)) as base, httpx.Client(base_url=base, headers=ONE, timeout=60) as http:
        trust_email_judge(home, tmp_path, judge="geval:email_writing@judge-llm")
        r = http.post("/council", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["judge"]["name"] == "geval:email_writing@judge-llm" and answer["judge"]["trusted"] is True
        assert answer["chosen"]["model_id"] == "spam-writer"
        assert {c["model_id"]: c["score"] for c in answer["candidates"]} == {"spam-writer": 90.0, "good-writer": 20.0}
        assert answer["pairs_stored"] == 1 and answer["judge_cost_estimate_usd"] > 0
        judged = [c for c in server.chat_calls if c["model"] == "judge-llm"]
        assert len(judged) == 2 and all(c["response_format"] == {"type": "json_object"} for c in judged)
        # the judge's estimate counts against the cap: a cap that would seat spam-writer unjudged is refused
        r = http.post("/council", json={**body, "max_tokens": 100, "max_cost_usd": 0.0003})
        assert (r.status_code, r.json()["error"]) == (422, "over_cost_cap") and "judging" in r.json()["detail"]
        # a failing judge: the heuristic decides, and the answer says why
        server.chat_errors["judge-llm"] = 500
        r = http.post("/council", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["chosen"]["model_id"] == "good-writer"
        judge = r.json()["judge"]
        assert judge["name"] == "heuristic:email_writing" and judge["trusted"] is False
        assert "the LLM judge geval:email_writing@judge-llm failed" in judge["reason"]
        del server.chat_errors["judge-llm"]
        # calibration that does not trust it: the heuristic decides (trusted here), said too
        (tmp_path / "calibration.duckdb").unlink()
        trust_email_judge(home, tmp_path, trusted=True)
        r = http.post("/council", json=body)
        judge = r.json()["judge"]
        assert judge["name"] == "heuristic:email_writing" and judge["trusted"] is True
        assert "geval:email_writing@judge-llm is not trusted" in judge["reason"]
    pairs = landed(home, "council_pairs")
    assert [(p["judge"], p["preferred_model"]) for p in pairs] == [("geval:email_writing@judge-llm", "spam-writer"),
                                                                  ("heuristic:email_writing", "good-writer"),
                                                                  ("heuristic:email_writing", "good-writer")]
