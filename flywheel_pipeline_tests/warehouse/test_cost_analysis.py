"""cost_analysis on real DuckDB files: given and computed costs summed exactly to the cent (and to
the pico-dollar), unpriced messages counted and never priced 0, registry models priced from their
base, costs per outcome over mature messages, the savings choice end to end, and the asset
materialized through Dagster with its MLflow artifact."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal

import dagster as dg
from mlflow import MlflowClient

from flywheel_pipeline.core.catalog import load_catalog
from flywheel_pipeline.core.costs import SavingsConfig
from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.core.models import DEFAULT_MODEL
from flywheel_pipeline.defs.learn.costs import cost_analysis
from flywheel_pipeline.defs.resources import MlflowResource, WarehouseResource
from flywheel_pipeline.warehouse import model_registry
from flywheel_pipeline.warehouse.cost_analysis import COLUMNS, build_cost_analysis, cost_rows, registry_models
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.conftest import T0, crm, message, reply, run_pipeline, sg

NANO = "gpt-4.1-nano"
LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"
TOGETHER_FT = "acme/Meta-Llama-3.1-8B-Instruct-Reference-flywheel-2f9a"


def _rows(con, **cfg) -> dict[tuple, dict]:
    catalog = load_catalog().with_registry(registry_models(con))
    build_cost_analysis(con, catalog, SavingsConfig(**cfg) if cfg else SavingsConfig())
    return {(r["model_id"], r["task_type"], r["organization_id"]): r for r in cost_rows(con)}


def test_costs_are_exact_given_or_computed_and_unpriced_messages_are_counted(con, landing):
    rng = random.Random(7)
    price = load_catalog().price(NANO)
    records, expected, expected_computed = [], Decimal(0), 0
    for i in range(3000):
        p, c = rng.randint(150, 900), rng.randint(60, 400)
        record = message(f"m{i}", lead=f"lead-{i}", model_id=NANO, prompt_tokens=p, completion_tokens=c)
        if i % 3:  # the outreach app's own figure, 8 decimals as the simulated world sends them
            record["cost_usd"] = round(rng.uniform(0, 0.01), 8)
            expected += Decimal(repr(record["cost_usd"]))
        else:  # no cost_usd: tokens times the catalog price
            expected += (p * price.input_per_million + c * price.output_per_million) / 1_000_000
            expected_computed += 1
        records.append(record)
    # no price anywhere: a model outside the catalog, and a catalog model without tokens
    records += [message(f"u{i}", lead=f"lead-u{i}", model_id="in-house-llm", prompt_tokens=10, completion_tokens=5)
                for i in range(7)]
    records += [message(f"t{i}", lead=f"lead-t{i}", model_id=NANO, prompt_tokens=100) for i in range(3)]
    # an unregistered model with its own cost is priced by that cost
    records.append(message("g1", lead="lead-g", model_id="in-house-llm", cost_usd=0.25))
    write_jsonl(landing, "messages", records)
    run_pipeline(con, landing)
    rows = _rows(con)
    assert [d[0] for d in con.execute("DESCRIBE cost_analysis").fetchall()] == list(COLUMNS)
    nano = rows[(NANO, "cold_email", "org-1")]
    assert nano["messages"] == 3003 and nano["unpriced_messages"] == 3
    assert nano["computed_cost_messages"] == expected_computed and nano["priced_messages"] == 3000
    assert isinstance(nano["cost_usd"], Decimal)
    assert nano["cost_usd"] == expected.quantize(Decimal("1e-12"))  # exact, not merely close
    assert nano["cost_usd"].quantize(Decimal("0.01")) == expected.quantize(Decimal("0.01"))
    in_house = rows[("in-house-llm", "cold_email", "org-1")]
    assert in_house["unpriced_messages"] == 7 and in_house["priced_messages"] == 1
    assert in_house["cost_usd"] == Decimal("0.25") and in_house["catalog_price_source"] is None
    # the sum over the table equals the exact sum over every priced message
    total = con.execute("SELECT sum(cost_usd), sum(unpriced_messages) FROM cost_analysis").fetchone()
    assert total == ((expected + Decimal("0.25")).quantize(Decimal("1e-12")), 10)


def test_nothing_priced_is_null_not_zero(con, landing):
    write_jsonl(landing, "messages", [message(f"m{i}", lead=f"l{i}", model_id="in-house-llm") for i in range(4)])
    run_pipeline(con, landing)
    row = _rows(con)[("in-house-llm", "cold_email", "org-1")]
    assert row["unpriced_messages"] == 4 and row["cost_usd"] is None and row["cost_per_message"] is None
    assert row["cost_per_reply"] is None and row["mature_messages"] == 0


def test_registry_models_are_priced_from_their_base(con, landing):
    model_registry.register(con, model_id=TOGETHER_FT, organization_id=None, task_type="all",
                            base_model="meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", backend="together",
                            method="supervised", job_id="j1", job_key="k1", dataset_version="d1", stats={},
                            hyperparameters={}, trained_tokens=None)
    write_jsonl(landing, "messages", [
        message("a", model_id=TOGETHER_FT, prompt_tokens=1_000_000, completion_tokens=1_000_000),
        message("b", lead="l2", model_id="sandbox:gpt-4o-mini-2024-07-18:sft:abc", prompt_tokens=1_000_000,
                completion_tokens=0)])
    run_pipeline(con, landing)
    rows = _rows(con)
    together = rows[(TOGETHER_FT, "cold_email", "org-1")]
    assert together["cost_usd"] == Decimal("0.36") and together["computed_cost_messages"] == 1
    assert together["catalog_price_source"] == "fine-tune of meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"
    assert rows[("sandbox:gpt-4o-mini-2024-07-18:sft:abc", "cold_email", "org-1")]["cost_usd"] == Decimal("0.15")


def _world(landing, model: str, count: int, *, replies: int, meetings: int, deals: int, task: str = "cold_email",
           org: str = "org-1", cost: float | None = None) -> None:
    records, events = [], []
    for i in range(count):
        mid = f"{model}-{task}-{org}-{i}"
        extra = {"cost_usd": cost} if cost is not None else {}
        records.append(message(mid, lead=f"lead-{mid}", org=org, model_id=model, task_type=task, prompt_tokens=400,
                               completion_tokens=200, latency_ms=1000 + i, **extra))
        events.append(sg(mid, "delivered", T0 + timedelta(minutes=1), organization_id=org))
    write_jsonl(landing, "messages", records)
    write_jsonl(landing, "sendgrid", events)
    at = T0 + timedelta(days=1)
    write_jsonl(landing, "replies", [
        reply(f"r-{r['message_id']}", r["message_id"], at, "Yes, this is interesting - can we talk on Tuesday?",
              organization_id=org, from_email=r["recipient_email"]) for r in records[:replies]])
    write_jsonl(landing, "crm", [crm(f"mb-{r['message_id']}", "meeting_booked", at, message_id=r["message_id"],
                                     organization_id=org) for r in records[:meetings]]
                + [crm(f"dc-{r['message_id']}", "deal_closed", at + timedelta(days=2), message_id=r["message_id"],
                       deal_value=1000, currency="USD", organization_id=org) for r in records[:deals]])


def test_cost_per_outcome_counts_mature_messages_and_savings_never_picks_an_unmeasured_or_worse_model(con, landing):
    _world(landing, "gpt-4o", 200, replies=50, meetings=20, deals=10, cost=0.01)
    _world(landing, DEFAULT_MODEL, 200, replies=50, meetings=20, deals=10)
    _world(landing, LLAMA, 200, replies=50, meetings=20, deals=10, task="follow_up")  # measured elsewhere only
    _world(landing, NANO, 200, replies=0, meetings=0, deals=0)  # the cheapest, clearly worse
    run_pipeline(con, landing)
    rows = _rows(con, min_quality_messages=100, max_quality_drop=0.5)
    big = rows[("gpt-4o", "cold_email", "org-1")]
    assert (big["messages"], big["mature_messages"], big["replies"], big["meetings"], big["deals"]) == (200, 200, 50, 20, 10)
    assert big["cost_usd"] == Decimal("2") and big["computed_cost_messages"] == 0
    assert abs(big["cost_per_reply"] - 0.04) < 1e-12 and abs(big["cost_per_deal"] - 0.2) < 1e-12
    assert big["cost_per_reply_low"] <= big["cost_per_reply"] <= big["cost_per_reply_high"]
    assert big["latency_ms_p50"] == 1099.5 and big["prompt_tokens_p95"] == 400
    # savings: Llama 3.1 8B is cheaper but has no outcomes on cold e-mails, gpt-4.1-nano is the cheapest,
    # measured and worse; gpt-4o-mini is measured and not worse (within the 50% margin this sample can show)
    assert big["savings_model"] == DEFAULT_MODEL
    mini_cost = 200 * (400 * Decimal("0.15") + 200 * Decimal("0.6")) / 1_000_000
    assert big["cost_on_savings_model_usd"] == mini_cost and big["savings_usd"] == Decimal("2") - mini_cost
    mini = rows[(DEFAULT_MODEL, "cold_email", "org-1")]
    assert mini["savings_model"] == DEFAULT_MODEL and mini["savings_usd"] == 0
    assert mini["computed_cost_messages"] == 200 and mini["cost_usd"] == mini_cost
    # at a 5% margin, 200 messages cannot show gpt-4o-mini not worse: no saving is claimed
    strict = _rows(con, min_quality_messages=100, max_quality_drop=0.05)[("gpt-4o", "cold_email", "org-1")]
    assert strict["savings_model"] == "gpt-4o" and strict["savings_usd"] == 0


def test_cost_analysis_materializes_with_markdown_and_an_mlflow_artifact(tmp_path, home, landing, monkeypatch):
    _world(landing, "gpt-4o", 30, replies=6, meetings=2, deals=1, cost=0.01)
    _world(landing, "in-house-llm", 5, replies=0, meetings=0, deals=0)
    con = connect(tmp_path / "wh.duckdb")
    run_pipeline(con, landing)
    con.close()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = {"warehouse": WarehouseResource(database=str(tmp_path / "wh.duckdb")),
           "mlflow": MlflowResource(tracking_uri=uri)}
    with dg.instance_for_test() as instance:
        result = dg.materialize([cost_analysis], instance=instance, resources=res)
        assert result.success
        meta = result.asset_materializations_for_node("cost_analysis")[0].metadata
    assert meta["rows"].value == 2 and meta["unpriced_messages"].value == 5 and meta["cost_usd"].value == "0.30"
    assert "per reply (95% CI)" in meta["costs"].value and "| org-1 |" in meta["costs"].value
    assert "measured outcomes" in meta["savings"].value
    run = MlflowClient(tracking_uri=uri).get_run(meta["mlflow_run_id"].value)
    assert run.data.tags["flywheel.kind"] == "cost_analysis" and run.data.metrics["unpriced_messages"] == 5
    artifacts = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run.info.run_id)}
    assert {"cost_analysis.json", "cost_analysis.md"} <= artifacts
    ro = connect(tmp_path / "wh.duckdb", read_only=True)
    assert ro.execute("SELECT count(*) FROM cost_analysis").fetchone()[0] == 2
    ro.close()
    # MLflow unreachable: a warning, not a failure
    bad = {**res, "mlflow": MlflowResource(tracking_uri="http://127.0.0.1:9/")}
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with dg.instance_for_test() as instance:
        result = dg.materialize([cost_analysis], instance=instance, resources=bad)
        assert result.success
        assert "mlflow_run_id" not in result.asset_materializations_for_node("cost_analysis")[0].metadata
        warnings = [e.message for e in instance.all_logs(result.run_id) if e.level == 30]
        assert any("cost_analysis not logged to MLflow" in w for w in warnings), warnings
