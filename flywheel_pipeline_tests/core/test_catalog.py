"""The model catalog (packaged YAML + $FLYWHEEL_HOME/catalog.yaml), fine-tunes joining it, exact
message costs, the Fieller interval's coverage and the savings choice."""

from __future__ import annotations

import math
import random
from decimal import Decimal

import pytest

from flywheel_pipeline import paths
from flywheel_pipeline.core.catalog import CatalogError, load_catalog, message_cost, parse_catalog
from flywheel_pipeline.core.costs import Quality, SavingsConfig, cheapest_not_worse
from flywheel_pipeline.core.models import DEFAULT_MODEL
from flywheel_pipeline.core.stats.fieller import fieller_ratio


def test_the_packaged_catalog_loads_dated_and_prices_the_default_model():
    catalog = load_catalog()
    for model in (DEFAULT_MODEL, "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano", "claude-sonnet-4-5-20250929",
                  "meta-llama/Llama-3.3-70B-Instruct-Turbo"):
        entry = catalog.get(model)
        assert entry is not None and entry.prices_as_of is not None, model
    assert {catalog.get(m).provider for m in catalog.entries} >= {"openai", "anthropic", "together"}
    price = catalog.price(DEFAULT_MODEL)
    assert (price.input_per_million, price.output_per_million) == (Decimal("0.15"), Decimal("0.6"))
    assert catalog.price("no-such-model") is None


def test_the_override_file_extends_and_overrides_by_model_id(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "fw"))
    override = paths.catalog_path()
    assert override == tmp_path / "fw" / "catalog.yaml"
    assert len(load_catalog(override)) == len(load_catalog())  # no file: the packaged catalog alone
    override.parent.mkdir(parents=True)
    override.write_text(
        "prices_as_of: 2026-11-30\n"
        "models:\n"
        "  - model_id: gpt-4o\n    input_per_million: 2.0\n"  # only the input price changes
        "  - model_id: acme-local-7b\n    provider: self-hosted\n    input_per_million: 0.01\n"
        "    output_per_million: 0.02\n    task_types: [cold_email]\n", encoding="utf-8")
    packaged, merged = load_catalog(), load_catalog(override)
    assert len(merged) == len(packaged) + 1
    gpt4o = merged.get("gpt-4o")
    assert gpt4o.input_per_million == Decimal("2.0") and gpt4o.output_per_million == Decimal("10.0")
    assert gpt4o.context_window == packaged.get("gpt-4o").context_window
    assert str(gpt4o.prices_as_of) == "2026-11-30"
    assert merged.price("acme-local-7b").output_per_million == Decimal("0.02")
    assert merged.sources[-1] == str(override)


@pytest.mark.parametrize("body, words", [
    ("models:\n  - model_id: cheap\n    provider: x\n    input_per_million: -0.1\n    output_per_million: 1\n",
     ["models[0] (cheap)", "input_per_million", "greater than or equal to 0"]),
    ("models:\n  - model_id: m\n    provider: x\n    input_per_million: 1\n    output_per_million: 1\n"
     "    colour: blue\n", ["models[0] (m)", "colour", "Extra inputs are not permitted"]),
    ("models:\n  - model_id: m\n    provider: x\n    input_per_million: 1\n    output_per_million: 1\n"
     "  - model_id: m\n    provider: y\n    input_per_million: 2\n    output_per_million: 2\n",
     ["models[1] (m)", "duplicate model_id", "models[0]"]),
    ("models:\n  - model_id: gpt-4o\n    input_per_million: 0.0000001\n", ["models[0] (gpt-4o)", "6 decimals"]),
    ("models:\n  - model_id: new\n    input_per_million: 1\n", ["models[0] (new)", "provider", "Field required"]),
    ("models:\n  - provider: x\n", ["models[0] has no model_id"]),
    ("models: [1, 2\n", ["not valid YAML"]),
    ("model: []\n", ["unknown top-level field", "model"]),
])
def test_a_bad_override_names_the_file_and_the_entry(tmp_path, body, words):
    bad = tmp_path / "catalog.yaml"
    bad.write_text(body, encoding="utf-8")
    with pytest.raises(CatalogError) as err:
        load_catalog(bad)
    assert str(err.value).startswith(str(bad)), err.value
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_the_packaged_file_is_checked_like_any_other():
    with pytest.raises(CatalogError, match="packaged.yaml: models\\[0\\] \\(m\\)"):
        parse_catalog("models:\n  - model_id: m\n    provider: p\n    input_per_million: -1\n"
                      "    output_per_million: 1\n", "packaged.yaml")


def test_fine_tuned_models_join_the_catalog_under_their_own_ids():
    catalog = load_catalog().with_registry([
        ("ft:gpt-4o-mini-2024-07-18:acme:flywheel-v2:abc", DEFAULT_MODEL, "openai"),
        ("sandbox:gpt-4o-mini-2024-07-18:sft:0123", DEFAULT_MODEL, "sandbox"),
        ("together-ft-1", "meta-llama/Llama-3.3-70B-Instruct-Turbo", "together"),
        ("orphan-ft", "not-in-the-catalog", "openai")])
    openai_ft = catalog.get("ft:gpt-4o-mini-2024-07-18:acme:flywheel-v2:abc")
    assert openai_ft.model_id.startswith("ft:") and openai_ft.base_model == DEFAULT_MODEL and openai_ft.fine_tuned
    assert (openai_ft.input_per_million, openai_ft.output_per_million) == (Decimal("0.3"), Decimal("1.2"))
    sandbox = catalog.price("sandbox:gpt-4o-mini-2024-07-18:sft:0123")  # trained nothing: priced as its base
    assert (sandbox.input_per_million, sandbox.output_per_million) == (Decimal("0.15"), Decimal("0.6"))
    together = catalog.get("together-ft-1")  # no fine-tuned prices given: the base's
    assert together.provider == "together" and together.input_per_million == Decimal("0.88")
    assert catalog.get("orphan-ft") is None
    # ids that name their base join without the registry too (the demo world's own fine-tune)
    unregistered = load_catalog().price("ft:gpt-4o-mini-2024-07-18:acme::flywheel-v1")
    assert unregistered.output_per_million == Decimal("1.2") and "fine-tune" in unregistered.source
    assert load_catalog().price("sandbox:gpt-4o-mini-2024-07-18:dpo:99").input_per_million == Decimal("0.15")


def test_a_message_costs_its_tokens_exactly():
    price = load_catalog().price("gpt-4.1-nano")
    assert message_cost(price, 1234, 567) == Decimal("0.0003502")  # 1234 * 0.1e-6 + 567 * 0.4e-6
    assert message_cost(price, None, 567) is None and message_cost(price, -1, 5) is None
    total = sum(message_cost(price, 333, 111) for _ in range(30_000))
    assert total == Decimal("30000") * (333 * Decimal("0.1") + 111 * Decimal("0.4")) / 1_000_000


def _coverage(n: int, p: float, sims: int, seed: int) -> tuple[float, int]:
    rng = random.Random(seed)
    truth = math.exp(-7 + 0.5 ** 2 / 2) / p  # E[cost] / P(reply), cost lognormal(-7, 0.5)
    covered = unbounded = 0
    for _ in range(sims):
        sx = sx2 = sy = sxy = 0.0
        for _ in range(n):
            cost = rng.lognormvariate(-7, 0.5)
            replied = 1.0 if rng.random() < p else 0.0
            sx, sx2, sy, sxy = sx + cost, sx2 + cost * cost, sy + replied, sxy + cost * replied
        ci = fieller_ratio(n, sx, sx2, sy, sy, sxy)
        covered += ci.ci_low <= truth <= ci.ci_high
        unbounded += not ci.bounded
    return covered / sims, unbounded


@pytest.mark.parametrize("n, p", [(2000, 0.03), (1500, 0.004)])
def test_the_cost_per_outcome_interval_covers_the_truth(n, p):
    """95% intervals of cost per reply cover E[cost]/P(reply) 95% of the time, with common replies
    and with a handful of rare ones (about 6 per sample). 400 samples: the band is about 3 standard
    errors, so an interval that ignored the denominator's noise (about 15% coverage here) fails."""
    coverage, _ = _coverage(n, p, 400, seed=int(n * p * 1000))
    assert 0.92 <= coverage <= 0.98, coverage


def test_the_interval_is_unbounded_without_events_and_never_negative():
    none = fieller_ratio(100, 1.0, 0.02, 0.0, 0.0, 0.0)
    assert none.estimate is None and none.ci_low == 0 and math.isinf(none.ci_high)
    one = fieller_ratio(100, 1.0, 0.02, 1.0, 1.0, 0.01)
    assert one.estimate == 1.0 and not one.bounded and one.ci_low > 0
    many = fieller_ratio(10_000, 10.0, 0.02, 500.0, 500.0, 0.5)
    assert many.bounded and many.ci_low < many.estimate < many.ci_high


def _quality(model: str, n: int, mean: float, task: str = "cold_email") -> Quality:
    # a 0/1 score with that mean: sum = sum of squares
    return Quality(model, task, n, mean * n, mean * n)


def test_savings_picks_the_cheapest_model_that_is_not_worse_and_never_an_unmeasured_one():
    catalog = load_catalog()
    cfg = SavingsConfig(min_quality_messages=200, max_quality_drop=0.05)
    quality = {(q.model_id, q.task_type): q for q in [
        _quality("gpt-4o", 5000, 0.20),                       # the row's model
        _quality("gpt-4.1-mini", 5000, 0.205),                # not worse, cheaper
        _quality(DEFAULT_MODEL, 5000, 0.21),                  # not worse, cheaper still: the pick
        _quality("meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", 5000, 0.12),  # cheap but clearly worse
        _quality("gpt-4.1-nano", 150, 0.30),                  # cheapest, looks great, too few messages
        _quality("unknown-model", 5000, 0.30),                # measured, not in the catalog: no price
        _quality("mistralai/Mixtral-8x7B-Instruct-v0.1", 5000, 0.30, task="follow_up"),  # another task type
    ]}
    basis = Decimal(1000) * 2 + Decimal(500) * 10  # 1M prompt and 0.5M completion tokens at gpt-4o's prices
    saving = cheapest_not_worse("gpt-4o", "cold_email", 1_000_000, 500_000, basis, 3000, quality, catalog, cfg)
    assert saving.model_id == DEFAULT_MODEL
    assert saving.cost_usd == Decimal("0.15") + Decimal("0.30")
    assert saving.savings_usd == basis - Decimal("0.45")
    # nano is cheaper still but unmeasured; with its outcomes measured it wins
    measured = {**quality, ("gpt-4.1-nano", "cold_email"): _quality("gpt-4.1-nano", 5000, 0.30)}
    assert cheapest_not_worse("gpt-4o", "cold_email", 1_000_000, 500_000, basis, 3000, measured, catalog,
                              cfg).model_id == "gpt-4.1-nano"
    # a row whose own model has no measured outcomes gets no proposal
    none = cheapest_not_worse("gpt-4o", "follow_up", 1_000_000, 500_000, basis, 3000, quality, catalog, cfg)
    assert none.model_id is None and none.savings_usd is None and "fewer than 200" in none.reason
    # the cheapest already: itself, saving 0
    own = cheapest_not_worse(DEFAULT_MODEL, "cold_email", 1_000_000, 500_000, Decimal("0.45"), 3000, quality,
                             catalog, cfg)
    assert own.model_id == DEFAULT_MODEL and own.savings_usd == 0


def test_not_worse_needs_evidence_not_just_a_point_estimate():
    """A candidate with a slightly better mean on few messages has a wide interval: not shown not worse."""
    catalog = load_catalog()
    cfg = SavingsConfig(min_quality_messages=200, max_quality_drop=0.05)
    quality = {("gpt-4o", "t"): _quality("gpt-4o", 5000, 0.20, "t"),
               (DEFAULT_MODEL, "t"): _quality(DEFAULT_MODEL, 250, 0.21, "t")}
    saving = cheapest_not_worse("gpt-4o", "t", 1000, 1000, Decimal("0.0125"), 1, quality, catalog, cfg)
    assert saving.model_id == "gpt-4o" and saving.savings_usd == 0


def test_no_saving_is_proposed_when_what_was_paid_is_below_the_catalog_price():
    catalog = load_catalog()
    cfg = SavingsConfig(min_quality_messages=200, max_quality_drop=0.05)
    quality = {("gpt-4o", "t"): _quality("gpt-4o", 5000, 0.20, "t"),
               (DEFAULT_MODEL, "t"): _quality(DEFAULT_MODEL, 5000, 0.21, "t")}
    # paid 0.0001 for tokens that cost 0.0045 on gpt-4o-mini at list price (a negotiated rate)
    saving = cheapest_not_worse("gpt-4o", "t", 10_000, 5_000, Decimal("0.0001"), 1, quality, catalog, cfg)
    assert saving.model_id == "gpt-4o" and saving.savings_usd == 0 and "less than what was paid" in saving.reason


def test_the_rows_own_model_counts_at_what_was_paid_not_at_its_list_price():
    """Paid 5 USD on gpt-4o-mini for tokens it lists at 0.45: a not-worse model at 1.20 saves 3.80
    (ranking the row's own model by its list price would have called it the cheapest, saving 0)."""
    catalog = load_catalog()
    cfg = SavingsConfig(min_quality_messages=200, max_quality_drop=0.05)
    price = catalog.price("gpt-4.1-mini")
    quality = {(DEFAULT_MODEL, "t"): _quality(DEFAULT_MODEL, 5000, 0.20, "t"),
               ("gpt-4.1-mini", "t"): _quality("gpt-4.1-mini", 5000, 0.21, "t")}
    saving = cheapest_not_worse(DEFAULT_MODEL, "t", 1_000_000, 500_000, Decimal(5), 3000, quality, catalog, cfg)
    on_mini = price.input_per_million + price.output_per_million / 2
    assert saving.model_id == "gpt-4.1-mini" and saving.cost_usd == on_mini
    assert saving.savings_usd == Decimal(5) - on_mini > 0
