"""The prompt optimizer on a simulated world with planted text drivers: it proposes the champion's next
version from outcome_drivers' guidance and deploys it only as a challenger at the first rollout step
(real Dagster materializations on a real DuckDB file); the LLM rewrite through a local
OpenAI-compatible server, used when valid and refused (falling back) when it is not; and the
simulator's hidden truth: a length instruction in the template really moves body length and replies."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone

import dagster as dg

from flywheel_pipeline.core.generation import OpenAICompatibleGenerator
from flywheel_pipeline.core.template_optimizer import propose
from flywheel_pipeline.core.templates import length_instruction
from flywheel_pipeline.defs.experiments.templates import prompt_optimizer
from flywheel_pipeline.defs.learn.drivers import outcome_drivers
from flywheel_pipeline.defs.resources import GenerationResource, MlflowResource, WarehouseResource
from flywheel_pipeline.routing import load_routing
from flywheel_pipeline.simulator import SimConfig, simulate
from flywheel_pipeline.simulator.world import DEMO_TEMPLATE, DEMO_TEMPLATE_ID
from flywheel_pipeline.warehouse import templates
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline.warehouse.template_routing import build_template_families
from flywheel_pipeline_tests.conftest import run_pipeline
from flywheel_pipeline_tests.fakes.openai_server import FakeOpenAI, serve

END = date(2026, 4, 1)
ADVICE = {"messages": 5000, "best": {"bucket": "50-99", "word_range": [50, 99], "rate": 0.12, "n": 1700,
                                     "estimate": 0.02, "ci": [0.01, 0.03], "p_adjusted": 0.001}, "avoid": []}


def _world(home, text_effects=True):
    simulate(home / "landing", SimConfig(seed=11, days=45, end=END, organizations=2, leads_per_org=400,
                                         messages_per_day=260, text_effects=text_effects))
    con = connect(home / "warehouse.duckdb")
    run_pipeline(con, home / "landing", as_of=datetime.combine(END, datetime.min.time(), tzinfo=timezone.utc))
    templates.add_template(con, template_id=DEMO_TEMPLATE_ID, version="1.0.0", text=DEMO_TEMPLATE)
    con.close()


def _materialize(home, config=None, generation=None):
    resources = {"warehouse": WarehouseResource(database=str(home / "warehouse.duckdb")),
                 "generation": generation or GenerationResource(),
                 "mlflow": MlflowResource(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")}
    with dg.instance_for_test() as instance:
        result = dg.materialize([outcome_drivers, prompt_optimizer], resources=resources, instance=instance,
                                run_config={"ops": {"prompt_optimizer": {"config": config or {}}}})
        assert result.success
        return {k: v.value for k, v in result.asset_materializations_for_node("prompt_optimizer")[0].metadata.items()}


def test_the_optimizer_proposes_from_the_drivers_and_deploys_a_challenger_only(home):
    _world(home)
    fake = FakeOpenAI()
    fake.chat_responder = lambda body: (  # a valid rewrite that keeps the instruction line verbatim
        "Write a concise e-mail to {{ first_name }} at {{ company }} ({{ industry }}), signed {{ sender_name }}.\n"
        + next(line for line in body["messages"][-1]["content"].splitlines()
               if line.startswith("Keep the body of the email")) + "\n")
    with serve(fake) as base_url:
        meta = _materialize(home, {"rewrite_model": "gpt-rewriter"},
                            GenerationResource(mode="openai", api_key="k", base_url=base_url))
    assert meta["proposed"] is True and meta["method"] == "llm:gpt-rewriter" and len(fake.chat_calls) == 1
    assert meta["template"] == f"{DEMO_TEMPLATE_ID}@1.1.0" and meta["deployment"] == "challenger at 10%"
    # the guidance it used: long bodies (150+ words, the planted driver) are the ones to avoid
    advice = meta["guidance"]
    assert advice["best"] is not None or any(a["word_range"][0] >= 150 for a in advice["avoid"])
    with connect(home / "warehouse.duckdb", read_only=True) as con:
        champion, challenger = templates.champion(con, "all"), templates.challenger(con, "all")
        stored = templates.get(con, DEMO_TEMPLATE_ID, "1.1.0")
    assert champion.key == f"{DEMO_TEMPLATE_ID}@1.0.0" and challenger.key == stored.key
    assert stored.parent_version == "1.0.0" and stored.source == "llm:gpt-rewriter"
    words = length_instruction(stored.text)
    assert words is not None and words.high is not None and words.high < 150
    # never straight to all traffic: the routing table sends it 10%, the champion keeps 90%
    arms = {a["ab_group"]: (a["template_version"], a["traffic_pct"])
            for a in load_routing()["template_families"]["templates-global-all"]["arms"]}
    assert arms == {"challenger": ("1.1.0", 10.0), "champion": ("1.0.0", 90.0)}
    # while it is tested, nothing else is proposed (a new proposal would restart the experiment)
    again = _materialize(home)
    assert again["proposed"] is False and "being tested" in again["reason"]
    # rolled back: the same length for the same champion is not proposed again
    with connect(home / "warehouse.duckdb") as con:
        templates.set_state(con, stored.key, "archived", "rolled_back", 0.0)
    after = _materialize(home)
    assert after["proposed"] is False and f"{stored.key} already asked" in after["reason"]


def test_a_world_where_length_moves_nothing_gets_no_proposal(home):
    _world(home, text_effects=False)
    meta = _materialize(home)
    assert meta["proposed"] is False and "no body length" in meta["reason"]
    with connect(home / "warehouse.duckdb", read_only=True) as con:
        assert templates.challenger(con, "all") is None and templates.versions(con, DEMO_TEMPLATE_ID) == ["1.0.0"]


def test_an_invalid_llm_rewrite_is_refused_and_the_deterministic_text_proposed():
    fake = FakeOpenAI()
    fake.chat_responder = lambda body: "Hi {{ first_name }}, what is your {{ budget }}?"
    with serve(fake) as base_url:
        generator = OpenAICompatibleGenerator("k", base_url)
        proposal = propose(DEMO_TEMPLATE, "1.0.0", ["1.0.0", "1.1.0"], ADVICE, generator, "gpt-rewriter")
        fake.chat_responder, fake.chat_failures = None, 5  # a provider that fails: also a fallback
        failed = propose(DEMO_TEMPLATE, "1.0.0", ["1.0.0"], ADVICE, OpenAICompatibleGenerator("k", base_url,),
                         "gpt-rewriter")
    assert proposal.method == "deterministic" and proposal.version == "1.2.0"
    assert "budget" in proposal.notes[0] and proposal.text.startswith(DEMO_TEMPLATE.rstrip("\n"))
    assert "between 50 and 99 words" in proposal.text and failed.method == "deterministic" and failed.notes


def test_the_simulated_model_follows_the_templates_length_and_replies_follow_the_planted_driver(home):
    """50/50 between the demo template and its version asking for short bodies: the challenger's
    bodies are all short, and its reply rate is higher, as TEXT_EFFECTS says (a simulation that could
    show the opposite: the text effect is multiplicative on the reply probability)."""
    con = connect(home / "warehouse.duckdb")
    templates.add_template(con, template_id=DEMO_TEMPLATE_ID, version="1.0.0", text=DEMO_TEMPLATE)
    short = DEMO_TEMPLATE + "Keep the body of the email under 150 words.\n"
    templates.add_template(con, template_id=DEMO_TEMPLATE_ID, version="1.1.0", text=short, as_challenger_pct=50.0)
    families, _ = build_template_families(con)
    con.close()
    start = END - timedelta(days=40)
    table = {"default_model": "gpt-4o-mini-2024-07-18", "families": {}, "template_families": families}
    simulate(home / "landing", SimConfig(seed=5, days=40, end=END, organizations=2, leads_per_org=1500,
                                         messages_per_day=400, routing_history=((start, table),)))
    messages = {}
    for f in sorted((home / "landing" / "messages").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            record = json.loads(line)
            if record["sent_at"] >= start.isoformat():
                messages[record["message_id"]] = record
    replied = set()
    for f in sorted((home / "landing" / "replies").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            record = json.loads(line)
            if record.get("message_id") in messages and "Auto-Submitted" not in record["headers"] \
                    and "X-Autoreply" not in record["headers"] and "Precedence" not in record["headers"]:
                replied.add(record["message_id"])
    by_version = defaultdict(lambda: [0, 0, 0])  # messages, long bodies, replies (with a message id)
    for mid, m in messages.items():
        assert m["template_id"] == DEMO_TEMPLATE_ID and "template_allocation" in m["metadata"]
        counts = by_version[m["template_version"]]
        counts[0] += 1
        counts[1] += len(m["body"].split()) >= 150
        counts[2] += mid in replied
        assert ("under 150 words" in m["user_prompt"]) == (m["template_version"] == "1.1.0")
    champion, challenger = by_version["1.0.0"], by_version["1.1.0"]
    assert challenger[1] == 0 and 0.25 < champion[1] / champion[0] < 0.42  # about a third long
    rate_champion, rate_challenger = champion[2] / champion[0], challenger[2] / challenger[0]
    se = (rate_champion * (1 - rate_champion) / champion[0] + rate_challenger * (1 - rate_challenger)
          / challenger[0]) ** 0.5
    assert (rate_challenger - rate_champion) / se > 2, (rate_champion, rate_challenger)
    assert 0.4 < challenger[0] / (champion[0] + challenger[0]) < 0.6
