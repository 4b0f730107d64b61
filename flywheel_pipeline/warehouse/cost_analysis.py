"""The cost analysis's queries: per (model, task type, organization) exact cost sums, outcome
counts over mature messages, token and latency percentiles; per (model, task type) the weighted
score's sums for the savings analysis; the derived table ``cost_analysis``, rebuilt per run.

Money is exact: a message's cost is its own ``cost_usd`` (taken to 12 decimals, a pico-dollar)
or else its prompt and completion tokens times the catalog's price per token, in
``DECIMAL(38, 12)`` (prices have at most 6 decimals per million tokens, so nothing is rounded),
and every sum is a DECIMAL sum. A message with neither is counted in ``unpriced_messages`` and
left out of every cost and cost-per figure (never priced as 0)."""

from __future__ import annotations

from decimal import Decimal

import duckdb

from flywheel_pipeline.core.catalog import Catalog
from flywheel_pipeline.core.costs import MAX_MESSAGE_COST_USD, OUTCOMES, Quality, SavingsConfig, cheapest_not_worse, cost_per
from flywheel_pipeline.core.outcome_score import weighted_score_sql

MONEY = "DECIMAL(38, 12)"
_SCORE = weighted_score_sql("deal_closed", "meeting_booked", "replied")
_OUTCOME_FLAGS = {"reply": "replied", "positive_reply": "positive_reply", "meeting": "meeting_booked",
                  "deal": "deal_closed"}

# the columns of cost_analysis, in order (README, "Model catalog")
COLUMNS = (
    "model_id", "task_type", "organization_id", "messages", "priced_messages", "computed_cost_messages",
    "unpriced_messages", "cost_usd", "cost_per_message", "mature_messages", "mature_cost_usd",
    "replies", "positive_replies", "meetings", "deals",
    *(f"cost_per_{o}{suffix}" for o in OUTCOMES for suffix in ("", "_low", "_high")),
    "prompt_tokens", "completion_tokens", "prompt_tokens_p50", "prompt_tokens_p95", "completion_tokens_p50",
    "completion_tokens_p95", "latency_ms_p50", "latency_ms_p95",
    "savings_model", "savings_basis_messages", "savings_basis_cost_usd", "cost_on_savings_model_usd",
    "savings_usd", "savings_reason", "catalog_price_source")


def registry_models(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str | None]]:
    """(model_id, base_model, backend) of every registered model: they join the catalog."""
    return [(m, b, k) for m, b, k in con.execute("SELECT model_id, base_model, backend FROM model_registry").fetchall()]


def message_models(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [m for (m,) in con.execute("SELECT DISTINCT model_id FROM messages WHERE model_id IS NOT NULL").fetchall()]


def _load_prices(con: duckdb.DuckDBPyConnection, catalog: Catalog, model_ids: list[str]) -> dict[str, str]:
    """The catalog prices, per token, of the messages' models, into a temporary table; returns
    each priced model's price source."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE _catalog_prices (model_id VARCHAR, input_per_token {MONEY}, "
                f"output_per_token {MONEY})")
    rows, sources = [], {}
    for model_id in model_ids:
        price = catalog.price(model_id)
        if price is not None:
            rows.append((model_id, price.input_per_token, price.output_per_token))
            sources[model_id] = price.source
    if rows:
        con.executemany("INSERT INTO _catalog_prices VALUES (?, ?, ?)", rows)
    return sources


_SUMS = f"""
CREATE OR REPLACE TEMP TABLE _cost_sums AS
WITH m AS (
    SELECT m.model_id, m.task_type, m.organization_id, m.prompt_tokens, m.completion_tokens, m.latency_ms,
           -- (ingestion quarantines costs outside this range; rows loaded before that rule are unpriced)
           CASE WHEN m.cost_usd BETWEEN 0 AND {MAX_MESSAGE_COST_USD} THEN m.cost_usd::{MONEY} END AS given,
           CASE WHEN m.prompt_tokens >= 0 AND m.completion_tokens >= 0
                THEN m.prompt_tokens * p.input_per_token + m.completion_tokens * p.output_per_token END AS computed,
           m.prompt_tokens >= 0 AND m.completion_tokens >= 0 AS has_tokens,
           coalesce(l.is_mature, false) AS mature,
           coalesce(l.replied, false) AS replied, coalesce(l.positive_reply, false) AS positive_reply,
           coalesce(l.meeting_booked, false) AS meeting_booked, coalesce(l.deal_closed, false) AS deal_closed
    FROM messages m LEFT JOIN message_labels l USING (message_key) LEFT JOIN _catalog_prices p USING (model_id)),
c AS (SELECT *, coalesce(given, computed) AS cost FROM m),
g AS (
SELECT model_id, task_type, organization_id, count(*) AS messages, count(cost) AS priced_messages,
       count(*) FILTER (given IS NULL AND computed IS NOT NULL) AS computed_cost_messages,
       count(*) FILTER (cost IS NULL) AS unpriced_messages,
       sum(cost) AS cost_usd,
       count(*) FILTER (mature AND cost IS NOT NULL) AS mature_messages,
       sum(cost) FILTER (mature) AS mature_cost_usd,
       sum(power(cost::DOUBLE, 2)) FILTER (mature) AS mature_cost_sq,
       {", ".join(f"count(*) FILTER (mature AND cost IS NOT NULL AND {flag}) AS n_{o}, "
                  f"sum(cost::DOUBLE) FILTER (mature AND {flag}) AS cost_on_{o}" for o, flag in _OUTCOME_FLAGS.items())},
       sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
       quantile_cont(prompt_tokens, 0.5) AS prompt_tokens_p50, quantile_cont(prompt_tokens, 0.95) AS prompt_tokens_p95,
       quantile_cont(completion_tokens, 0.5) AS completion_tokens_p50,
       quantile_cont(completion_tokens, 0.95) AS completion_tokens_p95,
       quantile_cont(latency_ms, 0.5) AS latency_ms_p50, quantile_cont(latency_ms, 0.95) AS latency_ms_p95,
       count(*) FILTER (has_tokens AND cost IS NOT NULL) AS basis_messages,
       sum(cost) FILTER (has_tokens) AS basis_cost,
       sum(prompt_tokens) FILTER (has_tokens AND cost IS NOT NULL) AS basis_prompt_tokens,
       sum(completion_tokens) FILTER (has_tokens AND cost IS NOT NULL) AS basis_completion_tokens
FROM c GROUP BY model_id, task_type, organization_id)
SELECT row_number() OVER (ORDER BY model_id, task_type, organization_id) AS row_no, * FROM g
"""


def quality_by_model(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str | None], Quality]:
    """The weighted score's sums over mature messages per (model, task type), every organization."""
    rows = con.execute(f"""SELECT model_id, task_type, count(*), sum({_SCORE}), sum(power({_SCORE}, 2))
                           FROM outcome_labels WHERE is_mature AND model_id IS NOT NULL GROUP BY ALL""").fetchall()
    return {(m, t): Quality(m, t, int(n), float(s), float(s2)) for m, t, n, s, s2 in rows}


_DERIVED = ("row_no BIGINT", *(f"cost_per_{o}{suffix} DOUBLE" for o in OUTCOMES for suffix in ("", "_low", "_high")),
            "savings_model VARCHAR", f"cost_on_savings_model_usd {MONEY}", f"savings_usd {MONEY}",
            "savings_reason VARCHAR", "catalog_price_source VARCHAR")


def build_cost_analysis(con: duckdb.DuckDBPyConnection, catalog: Catalog, cfg: SavingsConfig = SavingsConfig(),
                        alpha: float = 0.05) -> int:
    """Rebuild ``cost_analysis`` (CREATE OR REPLACE TABLE AS: derived data); returns its rows.
    ``catalog`` should already hold the registry's models (``Catalog.with_registry``)."""
    sources = _load_prices(con, catalog, message_models(con))
    con.execute(_SUMS)
    quality = quality_by_model(con)
    sums = con.execute(f"""SELECT row_no, model_id, task_type, mature_messages, mature_cost_usd::DOUBLE,
                                  coalesce(mature_cost_sq, 0), {", ".join(f"n_{o}, coalesce(cost_on_{o}, 0)" for o in OUTCOMES)},
                                  basis_messages, basis_cost, coalesce(basis_prompt_tokens, 0),
                                  coalesce(basis_completion_tokens, 0)
                           FROM _cost_sums ORDER BY row_no""").fetchall()
    derived = []
    for row in sums:
        row_no, model_id, task_type, n, cost, cost_sq = row[:6]
        values: list[object] = [row_no]
        for k in range(len(OUTCOMES)):
            events, on_events = row[6 + 2 * k], row[7 + 2 * k]
            if n:
                ratio = cost_per(cost or 0.0, cost_sq, int(n), int(events), float(on_events), alpha)
                values += [ratio.estimate, ratio.ci_low, ratio.ci_high]
            else:
                values += [None, None, None]
        basis_messages, basis_cost, p_tokens, c_tokens = row[6 + 2 * len(OUTCOMES):]
        saving = cheapest_not_worse(model_id, task_type, int(p_tokens), int(c_tokens), basis_cost, int(basis_messages),
                                    quality, catalog, cfg)
        values += [saving.model_id, saving.cost_usd, saving.savings_usd, saving.reason, sources.get(model_id)]
        derived.append(values)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _cost_derived ({', '.join(_DERIVED)})")
    if derived:
        con.executemany(f"INSERT INTO _cost_derived VALUES ({', '.join('?' * len(_DERIVED))})", derived)
    con.execute(f"""
        CREATE OR REPLACE TABLE cost_analysis AS
        SELECT s.model_id, s.task_type, s.organization_id, s.messages, s.priced_messages, s.computed_cost_messages,
               s.unpriced_messages, s.cost_usd, (s.cost_usd::DOUBLE / nullif(s.priced_messages, 0)) AS cost_per_message,
               s.mature_messages, s.mature_cost_usd, s.n_reply AS replies, s.n_positive_reply AS positive_replies,
               s.n_meeting AS meetings, s.n_deal AS deals,
               {", ".join(f"d.cost_per_{o}{suffix}" for o in OUTCOMES for suffix in ("", "_low", "_high"))},
               s.prompt_tokens, s.completion_tokens, s.prompt_tokens_p50, s.prompt_tokens_p95,
               s.completion_tokens_p50, s.completion_tokens_p95, s.latency_ms_p50, s.latency_ms_p95,
               d.savings_model, s.basis_messages AS savings_basis_messages, s.basis_cost AS savings_basis_cost_usd,
               d.cost_on_savings_model_usd, d.savings_usd, d.savings_reason, d.catalog_price_source
        FROM _cost_sums s JOIN _cost_derived d USING (row_no) ORDER BY s.row_no""")
    con.execute("DROP TABLE IF EXISTS _cost_sums")
    con.execute("DROP TABLE IF EXISTS _cost_derived")
    con.execute("DROP TABLE IF EXISTS _catalog_prices")
    return int(con.execute("SELECT count(*) FROM cost_analysis").fetchone()[0])


def cost_rows(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """The table as dicts (what the asset shows and logs)."""
    cursor = con.execute("SELECT * FROM cost_analysis ORDER BY organization_id, task_type, model_id")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]


def totals(con: duckdb.DuckDBPyConnection) -> dict[str, object]:
    row = con.execute("""SELECT coalesce(sum(messages), 0), coalesce(sum(computed_cost_messages), 0),
                                coalesce(sum(unpriced_messages), 0), sum(cost_usd), sum(savings_usd)
                         FROM cost_analysis""").fetchone()
    return {"messages": int(row[0]), "computed_cost_messages": int(row[1]), "unpriced_messages": int(row[2]),
            "cost_usd": row[3] if row[3] is not None else None,
            "savings_usd": row[4] if row[4] is not None else Decimal(0)}
