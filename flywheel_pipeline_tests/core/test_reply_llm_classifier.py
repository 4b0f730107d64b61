"""The llm reply classifier through the real openai SDK against the local OpenAI-protocol
server: JSON schema answers, few-shot prompt, batches, retries, the per-run budget, the cache
by reply hash and version, the offline fallback, and `flywheel replies eval --classifier llm`."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from flywheel_pipeline.cli import main
from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.core.reply_classifiers import make_reply_classifier
from flywheel_pipeline.core.reply_cue_model import CueModelReplyClassifier
from flywheel_pipeline.core.reply_eval_set import shipped_set
from flywheel_pipeline.core.reply_llm_classifier import (RESPONSE_SCHEMA, AnswerError, LLMReplyClassifier,
                                                         LLMSettings, parse_answer)
from flywheel_pipeline.warehouse.reply_intents import classify_new_replies
from flywheel_pipeline_tests.conftest import T0, message, reply, run_pipeline
from flywheel_pipeline_tests.fakes.openai_server import FakeOpenAI, serve

OFFLINE = CueModelReplyClassifier()


def answer_like_cue_model(body: dict) -> str:
    """The fake model: labels every reply it is shown as cue_model would."""
    shown = json.loads(body["messages"][-1]["content"].split("\n", 1)[1])
    labels = []
    for item in shown:
        got = OFFLINE.classify(subject=None, text=item["reply"], headers={})
        labels.append({"n": item["n"], "intent": got.intent, "sentiment": got.sentiment,
                       "confidence": 0.9, "reason": "fake"})
    return json.dumps({"labels": labels})


@pytest.fixture
def fake():
    server = FakeOpenAI()
    server.chat_responder = answer_like_cue_model
    with serve(server) as base_url:
        server.base_url = base_url
        yield server


def settings(fake, tmp_path, **overrides) -> LLMSettings:
    return LLMSettings(**{"model": "gpt-test", "base_url": fake.base_url, "api_key": "k", "batch_size": 20,
                          "backoff_s": 0.01, "cache_path": tmp_path / "cache.sqlite", **overrides})


def replies(n: int):
    rows = shipped_set("measuring")[:n]
    return [(row.subject, row.text, row.headers) for row in rows]


def test_requests_carry_the_schema_few_shots_and_only_the_replys_own_words(fake, tmp_path):
    classifier = LLMReplyClassifier(settings(fake, tmp_path))
    body = "No thanks.\n\nOn Tue, Mar 3, 2026 at 10:14 AM Alex Rivera <alex@outreach.example> wrote:\n" \
           "> Would you be interested in a quick call?"
    result = classifier.classify(subject="Re: hi", text=body, headers={})
    assert (result.intent, result.sentiment, result.confidence) == ("not_interested", "negative", 0.9)
    (call,) = fake.chat_calls
    assert call["model"] == "gpt-test" and call["temperature"] == 0
    assert call["response_format"] == {"type": "json_schema", "json_schema": RESPONSE_SCHEMA}
    system, user = call["messages"]
    assert "Labelled examples:" in system["content"] and system["content"].count(" -> ") >= 20
    assert '"No thanks."' in user["content"] and "quick call" not in user["content"]
    assert classifier.version.startswith("gpt-test:1.")


def test_batches_and_the_cache_by_reply_hash_and_version(fake, tmp_path):
    batch = replies(45)
    first = LLMReplyClassifier(settings(fake, tmp_path)).classify_batch(batch)
    calls = len(fake.chat_calls)
    assert calls == 3  # 45 replies (fewer after auto-reply headers and duplicates) in batches of 20
    again = LLMReplyClassifier(settings(fake, tmp_path))
    assert again.classify_batch(batch) == first and len(fake.chat_calls) == calls and again.cache_hits > 0
    other_model = LLMReplyClassifier(settings(fake, tmp_path, model="gpt-other"))
    other_model.classify_batch(batch)
    assert len(fake.chat_calls) == 2 * calls  # another version is asked again


def test_failures_and_bad_answers_are_retried(fake, tmp_path):
    fake.chat_failures = 2
    classifier = LLMReplyClassifier(settings(fake, tmp_path, cache_path=None))
    assert classifier.classify(subject=None, text="Yes please, send pricing.", headers={}).intent == "interested"
    assert classifier.requests == 3 and classifier.fallbacks == 0

    answers = iter(["not json", json.dumps({"labels": [{"n": 0, "intent": "maybe", "sentiment": "neutral",
                                                        "confidence": 1, "reason": ""}]})])
    fake.chat_responder = lambda body: next(answers, None) or answer_like_cue_model(body)
    classifier = LLMReplyClassifier(settings(fake, tmp_path, cache_path=None))
    assert classifier.classify(subject=None, text="Not interested.", headers={}).intent == "not_interested"
    assert classifier.requests == 3


def test_a_batch_that_keeps_failing_falls_back_to_the_offline_classifier(fake, tmp_path):
    fake.chat_failures = 10
    classifier = LLMReplyClassifier(settings(fake, tmp_path, max_attempts=2))
    result = classifier.classify(subject=None, text="Sure, Tuesday at 3pm works.", headers={})
    assert (result.intent, result.classifier, result.classifier_version) == \
        ("meeting_request", "cue_model", OFFLINE.version)
    assert classifier.requests == 2 and classifier.fallbacks == 1


def test_parse_answer_checks_every_label():
    good = {"labels": [{"n": 0, "intent": "other", "sentiment": "neutral", "confidence": 0.5, "reason": "x"}]}
    assert parse_answer(json.dumps(good), [0])[0].intent == "other"
    for bad in ({"labels": []}, {"labels": [{**good["labels"][0], "n": 7}]},
                {"labels": [{**good["labels"][0], "confidence": 3}]}, {"nope": 1}):
        with pytest.raises(AnswerError):
            parse_answer(json.dumps(bad), [0])


def test_the_budget_holds_and_the_rest_is_asked_again_next_run(fake, tmp_path, landing, con):
    texts = ["Sure, Tuesday at 3pm works.", "Not interested.", "Yes please!", "Remove me from your list.",
             "Can you send pricing?", "Try me next quarter."]
    write_jsonl(landing, "messages", [message(f"m{i}", lead=f"l{i}") for i in range(len(texts))], name="m.jsonl")
    write_jsonl(landing, "replies", [reply(f"r{i}", f"m{i}", T0 + timedelta(hours=1), text)
                                     for i, text in enumerate(texts)], name="r.jsonl")
    run_pipeline(con, landing)  # classified by the default cue_model first

    tight = LLMReplyClassifier(settings(fake, tmp_path, batch_size=2, max_requests=2))
    result = classify_new_replies(con, tight)
    assert result.reclassified == 6 and tight.requests == 2 and tight.fallbacks == 2
    by_classifier = dict(con.execute("SELECT classifier, count(*) FROM reply_intents GROUP BY 1").fetchall())
    assert by_classifier == {"llm": 4, "cue_model": 2}

    enough = LLMReplyClassifier(settings(fake, tmp_path, batch_size=2, max_requests=10))
    result = classify_new_replies(con, enough)
    assert result.reclassified == 2 and enough.requests == 1  # only the two left to the fallback
    assert con.execute("SELECT DISTINCT classifier FROM reply_intents").fetchall() == [("llm",)]


def test_the_llm_classifier_by_name_and_measured_with_replies_eval(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "fw"))
    monkeypatch.delenv("FLYWHEEL_REPLY_LLM_MODEL", raising=False)
    with pytest.raises(ValueError, match="FLYWHEEL_REPLY_LLM_MODEL"):
        make_reply_classifier("llm")
    monkeypatch.setenv("FLYWHEEL_REPLY_LLM_MODEL", "gpt-test")
    monkeypatch.setenv("FLYWHEEL_REPLY_LLM_BASE_URL", fake.base_url)
    monkeypatch.setenv("FLYWHEEL_REPLY_LLM_API_KEY", "k")
    monkeypatch.setenv("FLYWHEEL_REPLY_LLM_BATCH_SIZE", "50")
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"id": f"x{i}", "text": t, "intent": intent}) + "\n" for i, (t, intent) in
                            enumerate([("Sure, Tuesday at 3pm works.", "meeting_request"),
                                       ("Not interested.", "not_interested")])), encoding="utf-8")
    assert main(["replies", "eval", "--classifier", "llm", "--file", str(mine)]) == 0
    out = capsys.readouterr().out
    assert "classifier llm:gpt-test:1." in out and "positive recall    1.000 [0.207, 1.000] (1/1)" in out
    assert len(fake.chat_calls) == 1  # both replies in one batch
    assert (tmp_path / "fw" / "cache" / "reply_llm.sqlite").exists()
    monkeypatch.setenv("FLYWHEEL_REPLY_LLM_MAX_REQUESTS", "0")
    with pytest.raises(ValueError, match="positive integer"):
        make_reply_classifier("llm")
