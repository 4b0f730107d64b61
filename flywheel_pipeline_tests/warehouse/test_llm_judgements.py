"""The LLM judge (deepeval G-Eval) on real DuckDB files against the local OpenAI-compatible server:
happy path, timeouts, non-JSON, out-of-range scores, the budget stopping a run mid-way and the
next run finishing, reuse by content hash, a criteria version change, unknown task types."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import timedelta
from decimal import Decimal

import dagster as dg
import pytest

from flywheel_pipeline.core import llm_judge
from flywheel_pipeline.core.catalog import load_catalog
from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.defs.learn.judgements import message_llm_judgements
from flywheel_pipeline.defs.resources import MessageJudgeResource, WarehouseResource
from flywheel_pipeline.warehouse.message_judgements import judge_with_llm
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.conftest import T0, message, run_pipeline, sg
from flywheel_pipeline_tests.fakes.openai_server import FakeOpenAI, serve

MODEL = "gpt-4o-mini"  # priced by the shipped catalog: 0.15 / 0.60 USD per million tokens
ALL_CRITERIA = {name for c in llm_judge.CRITERIA.values() for name in c.dimensions}


def _shown(body: dict) -> str:
    """The message text the judge prompt shows (G-Eval's 'Actual Output')."""
    prompt = body["messages"][-1]["content"]
    match = re.search(r"Actual Output:\n(.*?)\n\s*\n\s*\nParameters", prompt, re.DOTALL)
    assert match is not None, prompt
    return match.group(1)


def responder(body: dict) -> str:
    """A judge that answers with valid JSON unless the message asks otherwise: NONJSON (prose),
    OUTOFRANGE (a score of 11), BADCRITERION (a criterion of -1). The score is the number of
    question marks (so different texts differ)."""
    text = _shown(body)
    if "NONJSON" in text:
        return "This e-mail is quite good, I would give it a seven."
    score = 11 if "OUTOFRANGE" in text else min(10, 3 + text.count("?"))
    criteria = {name: (-1 if "BADCRITERION" in text else 7) for name in ALL_CRITERIA}
    return json.dumps({"score": score, "criteria": criteria, "reason": "specific and short",
                       "strengths": ["names the company"], "weaknesses": ["no number"],
                       "suggestions": ["add one concrete result"]})


@pytest.fixture
def fake():
    server = FakeOpenAI()
    server.chat_responder = responder
    server.chat_usage = {"prompt_tokens": 1000, "completion_tokens": 200}  # 0.00027 USD a call at gpt-4o-mini
    with serve(server) as url:
        server.url = url
        yield server


CALL_COST = Decimal("0.00027")


def _judge(fake, *, budget: str = "10", timeout_s: float = 5.0, attempts: int = 2) -> llm_judge.LLMJudge:
    settings = llm_judge.JudgeSettings(MODEL, "sk-test", fake.url, timeout_s=timeout_s, max_attempts=attempts,
                                       backoff_s=0.0)
    return llm_judge.LLMJudge(settings, load_catalog().price(MODEL), llm_judge.Budget(Decimal(budget)))


def _land(landing, messages: list[dict]) -> None:
    write_jsonl(landing, "messages", messages)
    write_jsonl(landing, "sendgrid", [sg(m["message_id"], "delivered", T0 + timedelta(minutes=1)) for m in messages])


def _lead(first: str = "Dana", company: str = "Acme") -> dict:
    return {"metadata": {"first_name": first, "company": company, "industry": "logistics", "role": "VP Ops"}}


def _rows(con) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in con.execute(
        "SELECT m.message_id, j.judge, j.criteria_version, j.score, j.unjudged_reason, j.reused, j.attempts, "
        "j.cost_usd, j.judge_model, j.dimensions, j.critique FROM message_judgements j JOIN messages m "
        "USING (message_key) WHERE j.judge LIKE 'geval:%'").fetchall()}


def _warehouse(tmp_path, messages: list[dict]) -> WarehouseResource:
    db = tmp_path / "wh.duckdb"
    con = connect(db)
    _land(tmp_path / "landing", messages)
    run_pipeline(con, tmp_path / "landing")
    con.close()
    return WarehouseResource(database=str(db))


def test_happy_path_scores_criteria_and_critique_with_model_version_and_exact_cost(tmp_path, fake):
    warehouse = _warehouse(tmp_path, [
        message("m1", body="Hi Dana, Acme ships 40% faster with us? Open to a call?", **_lead()),
        message("m2", body="Hi Sam, short note. Worth a chat?", task_type="reply", **_lead("Sam", "Bolt")),
        message("m3", body="A poem about routes.", task_type="poetry", **_lead())])
    run = judge_with_llm(warehouse.connect, _judge(fake), concurrency=3)
    assert run.judged == {f"geval:email_writing@{MODEL}": 1, f"geval:conversation_response@{MODEL}": 1,
                          f"geval:generic@{MODEL}": 1}
    assert run.unjudged == {} and not run.stopped_by_budget and run.left == 0
    assert run.calls == 3 and run.spent_usd == 3 * CALL_COST
    with warehouse.connect() as con:
        rows = _rows(con)
    judge, version, score, reason, reused, attempts, cost, model, dims, critique = rows["m1"]
    assert (judge, version, reason, reused, attempts, model) == (f"geval:email_writing@{MODEL}", "1", None, False, 1,
                                                                  MODEL)
    assert score == 50.0  # two question marks: 5 of 10, as 0-100
    assert cost == CALL_COST
    assert json.loads(dims) == {n: 0.7 for n in llm_judge.CRITERIA["email_writing"].dimensions}
    assert json.loads(critique) == {"reason": "specific and short", "strengths": ["names the company"],
                                    "weaknesses": ["no number"], "suggestions": ["add one concrete result"]}
    # the prompt carries the lead context, the task type and the family's criteria, in JSON mode
    first = next(c for c in fake.chat_calls if "Acme ships" in c["messages"][-1]["content"])
    shown = first["messages"][-1]["content"]
    assert first["response_format"] == {"type": "json_object"} and first["max_tokens"] == 600
    assert "first_name: Dana" in shown and "Task type: cold_email" in shown and "call_to_action" in shown
    # an unknown task type falls back to the generic criteria, named as such
    assert rows["m3"][0] == f"geval:generic@{MODEL}"
    generic = next(c for c in fake.chat_calls if "A poem about routes" in c["messages"][-1]["content"])
    assert "task_fit" in generic["messages"][-1]["content"]
    # a second run judges nothing and calls nobody
    calls = len(fake.chat_calls)
    again = judge_with_llm(warehouse.connect, _judge(fake))
    assert again.judged == {} and again.reused == {} and len(fake.chat_calls) == calls


def test_timeout_is_retried_then_recorded_unjudged_and_tried_again_by_the_next_run(tmp_path, fake):
    warehouse = _warehouse(tmp_path, [message("slow", body="SLOW hello, open to a call?", **_lead()),
                                      message("ok", body="Hello, open to a call?", **_lead())])
    fake.chat_delay = lambda body: 2.0 if "SLOW" in _shown(body) else 0.0
    run = judge_with_llm(warehouse.connect, _judge(fake, timeout_s=0.3, attempts=2))
    assert run.unjudged == {f"geval:email_writing@{MODEL}": {llm_judge.TIMEOUT: 1}}
    assert run.left == 1  # the timed-out message is the next run's
    with warehouse.connect() as con:
        rows = _rows(con)
    assert rows["slow"][2] is None and rows["slow"][3] == llm_judge.TIMEOUT and rows["slow"][5] == 2  # never 0
    assert "no answer within" in json.loads(rows["slow"][9])["error"]
    assert rows["slow"][6] > 0  # two attempts without usage: charged what they could have cost
    assert rows["ok"][2] is not None
    fake.chat_delay = None
    later = judge_with_llm(warehouse.connect, _judge(fake))
    assert later.judged == {f"geval:email_writing@{MODEL}": 1} and later.left == 0
    with warehouse.connect() as con:
        assert _rows(con)["slow"][2:4] == (40.0, None)


@pytest.mark.parametrize("marker, reason", [("NONJSON", llm_judge.NON_JSON),
                                            ("OUTOFRANGE", llm_judge.OUT_OF_RANGE),
                                            ("BADCRITERION", llm_judge.OUT_OF_RANGE)])
def test_bad_replies_are_retried_then_unjudged_with_the_reason_never_zero(tmp_path, fake, marker, reason):
    warehouse = _warehouse(tmp_path, [message("bad", body=f"{marker} hello there?", **_lead()),
                                      message("good", body="Hello there, worth a call?", **_lead())])
    run = judge_with_llm(warehouse.connect, _judge(fake, attempts=3))
    assert run.unjudged == {f"geval:email_writing@{MODEL}": {reason: 1}}
    bad_calls = [c for c in fake.chat_calls if marker in c["messages"][-1]["content"]]
    assert len(bad_calls) == 3  # retried up to max_attempts
    with warehouse.connect() as con:
        rows = _rows(con)
        assert con.execute("SELECT count(*) FROM message_judgements WHERE score = 0").fetchone()[0] == 0
    assert rows["bad"][2] is None and rows["bad"][3] == reason and rows["bad"][5] == 3
    assert rows["bad"][6] == 3 * CALL_COST  # answered calls cost what their usage says
    assert rows["good"][2] == 40.0
    # a bad reply is final for this criteria version: the next run does not pay for it again
    calls = len(fake.chat_calls)
    again = judge_with_llm(warehouse.connect, _judge(fake))
    assert again.left == 0 and len(fake.chat_calls) == calls


def test_budget_stops_the_run_mid_way_and_the_next_run_judges_the_rest(tmp_path, fake):
    warehouse = _warehouse(tmp_path, [message(f"m{i}", body=f"Hi Dana, note {i}. Open to a call?", **_lead())
                                      for i in range(12)])
    first = judge_with_llm(warehouse.connect, _judge(fake, budget="0.002"), concurrency=2, page_size=4)
    judged = sum(first.judged.values())
    assert first.stopped_by_budget and 1 <= judged < 12
    assert first.spent_usd == judged * CALL_COST <= Decimal("0.002")
    assert first.left == 12 - judged and first.unjudged == {}
    with warehouse.connect() as con:
        rows = _rows(con)
    assert len(rows) == judged and all(r[3] is None for r in rows.values())  # the rest is not recorded at all
    rest = judge_with_llm(warehouse.connect, _judge(fake, budget="1"))
    assert sum(rest.judged.values()) == 12 - judged and rest.left == 0 and not rest.stopped_by_budget
    with warehouse.connect() as con:
        assert len(_rows(con)) == 12
    assert len(fake.chat_calls) == 12  # every message judged exactly once over the two runs


def test_identical_content_is_judged_once_and_copied_but_other_lead_context_is_judged_again(tmp_path, fake):
    body = "Hi there, one line. Open to a call?"
    warehouse = _warehouse(tmp_path, [message("a1", body=body, **_lead()), message("a2", body=body, **_lead()),
                                      message("b1", body=body, **_lead("Lee", "Zeta"))])
    run = judge_with_llm(warehouse.connect, _judge(fake))
    judge = f"geval:email_writing@{MODEL}"
    assert run.judged == {judge: 2} and run.reused == {judge: 1} and len(fake.chat_calls) == 2
    with warehouse.connect() as con:
        rows = _rows(con)
    assert sorted((rows[m][4], rows[m][6]) for m in ("a1", "a2")) == [(False, CALL_COST), (True, 0)]
    # a later message with the same content (text and lead) is copied for free
    _land(tmp_path / "landing", [message("a3", body=body, **_lead())])
    with warehouse.connect() as con:
        run_pipeline(con, tmp_path / "landing")
    later = judge_with_llm(warehouse.connect, _judge(fake))
    assert later.reused == {judge: 1} and later.judged == {} and len(fake.chat_calls) == 2
    with warehouse.connect() as con:
        assert _rows(con)["a3"][2:5] == (rows["a1"][2], None, True)


def test_a_criteria_version_change_judges_every_message_again(tmp_path, fake, monkeypatch):
    warehouse = _warehouse(tmp_path, [message(f"m{i}", body=f"Hi, note {i}. Call?", **_lead()) for i in range(3)]
                           + [message("r1", body="Thanks, yes?", task_type="reply", **_lead())])
    judge_with_llm(warehouse.connect, _judge(fake))
    assert len(fake.chat_calls) == 4
    monkeypatch.setitem(llm_judge.CRITERIA, "email_writing",
                        dataclasses.replace(llm_judge.CRITERIA["email_writing"], version="2"))
    run = judge_with_llm(warehouse.connect, _judge(fake))
    assert run.judged == {f"geval:email_writing@{MODEL}": 3} and len(fake.chat_calls) == 7  # not the reply
    with warehouse.connect() as con:
        versions = con.execute("SELECT criteria_version, count(*) FROM message_judgements WHERE judge = ? "
                               "GROUP BY ALL ORDER BY 1", [f"geval:email_writing@{MODEL}"]).fetchall()
    assert versions == [("1", 3), ("2", 3)]  # the old scores stay, each with its version


def test_a_refused_key_fails_the_run_without_recording_anything(tmp_path, fake):
    warehouse = _warehouse(tmp_path, [message("m1", body="Hi, open to a call?", **_lead())])
    fake.chat_failures, fake.chat_failure_status = 10, 401  # OpenAI's answer to a wrong key
    with pytest.raises(llm_judge.JudgeMisconfigured, match="401"):
        judge_with_llm(warehouse.connect, _judge(fake))
    with warehouse.connect() as con:
        assert _rows(con) == {}
    assert fake.chat_failures == 9  # not retried: every message would fail the same way


def test_the_asset_is_off_by_default_and_ends_green_with_a_warning_at_its_budget(tmp_path, fake):
    warehouse = _warehouse(tmp_path, [message(f"m{i}", body=f"Hi Dana, note {i}. Call?", **_lead())
                                      for i in range(6)])
    with dg.instance_for_test() as instance:
        off = dg.materialize([message_llm_judgements], instance=instance,
                             resources={"warehouse": warehouse, "message_judge": MessageJudgeResource()})
        assert off.success and fake.chat_calls == []
        assert off.asset_materializations_for_node("message_llm_judgements")[0].metadata["enabled"].value is False
        judge = MessageJudgeResource(mode="geval", model=MODEL, api_key="sk-test", base_url=fake.url,
                                     budget_usd=0.0012, concurrency=1, backoff_s=0)
        result = dg.materialize([message_llm_judgements], instance=instance,
                                resources={"warehouse": warehouse, "message_judge": judge})
        assert result.success
        meta = result.asset_materializations_for_node("message_llm_judgements")[0].metadata
        judged = meta["judged_now"].value
        assert meta["stopped_by_budget"].value is True and 1 <= judged < 6
        assert meta["left_for_next_run"].value == 6 - judged
        assert Decimal(meta["spent_usd"].value) == judged * CALL_COST and meta["budget_usd"].value == "0.0012"
        warnings = [e.user_message for e in instance.all_logs(result.run_id)
                    if e.level == 30 and "budget" in e.user_message]
        assert warnings and f"{6 - judged} messages left unjudged for the next run" in warnings[0]
        unpriced = MessageJudgeResource(mode="geval", model="no-such-model", api_key="k", base_url=fake.url)
        failed = dg.materialize([message_llm_judgements], instance=instance, raise_on_error=False,
                                resources={"warehouse": warehouse, "message_judge": unpriced})
        assert not failed.success


def test_the_binding_is_off_unless_asked_and_refuses_a_bad_budget_in_one_line(monkeypatch):
    from flywheel_pipeline.defs.resources import local_resources, production_resources

    monkeypatch.delenv("FLYWHEEL_MESSAGE_JUDGE", raising=False)
    assert not local_resources()["message_judge"].enabled
    monkeypatch.setenv("FLYWHEEL_MESSAGE_JUDGE", "geval")
    monkeypatch.setenv("FLYWHEEL_JUDGE_MODEL", MODEL)
    monkeypatch.setenv("FLYWHEEL_MESSAGE_JUDGE_BUDGET_USD", "2.5")
    bound = production_resources()["message_judge"]
    assert bound.enabled and bound.model == MODEL and bound.budget_usd == 2.5 and bound.concurrency == 4
    monkeypatch.setenv("FLYWHEEL_MESSAGE_JUDGE_BUDGET_USD", "lots")
    with pytest.raises(ValueError, match="FLYWHEEL_MESSAGE_JUDGE_BUDGET_USD must be a number above 0, got 'lots'"):
        local_resources()
    with pytest.raises(ValueError, match="unknown message judge mode 'gpt'"):
        _ = MessageJudgeResource(mode="gpt").enabled
