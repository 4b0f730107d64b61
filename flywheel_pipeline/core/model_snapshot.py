"""The published model-stats snapshot (``$FLYWHEEL_HOME/model_stats.json``), pure: built from
the warehouse's rows (warehouse/model_stats.py) by the ``model_choice_stats`` asset, read by the
service and ``choose_model`` without opening the warehouse; and the routing candidates of a task
and organization from it and the catalog.

A snapshot::

    {"version": 1, "generated_at": "...", "quality_metric": "reply_rate", "alpha": 0.05,
     "registry_models": [[model_id, base_model, backend], ...],
     "tokens": {"cold_email": [prompt_p50, completion_p50], "all": [...]},
     "models": {"<organization or *>": {"<task type or all>": {"<model_id>": {measured...}}}},
     "costs": {"<organization>": [cost_analysis rows]},
     "executions": {"<organization>": [recent messages, newest first]}}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from flywheel_pipeline.core.catalog import Catalog, CatalogEntry
from flywheel_pipeline.core.model_choice import (ALL_ORGANIZATIONS, ALL_TASKS, DEFAULT_ALPHA, DEFAULT_COMPLETION_TOKENS,
                                                 DEFAULT_PROMPT_TOKENS, DEFAULT_QUALITY_METRIC, MIN_ORG_MESSAGES,
                                                 Candidate, Measured, quality_bounds, unknown_model, ChoiceError)

SNAPSHOT_VERSION = 1
_SUCCESSES = {"reply_rate": "replies", "positive_reply_rate": "positive_replies", "meeting_rate": "meetings",
              "weighted_score": "replies"}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    return value


def measured_entry(row: Mapping[str, Any], metric: str, alpha: float) -> dict[str, Any]:
    """One model's measurements in one scope, with the quality metric's estimate and bounds."""
    n = int(row["mature_messages"] or 0)
    quality, low, high = quality_bounds(metric, n, int(row[_SUCCESSES[metric]] or 0), float(row["score_sum"] or 0),
                                        float(row["score_sum_squares"] or 0), alpha)
    out = {k: _plain(v) for k, v in row.items() if k not in ("model_id", "task_type", "organization_id")}
    out.update(scope=row["organization_id"], quality=quality, quality_low=low, quality_high=high)
    for name, events in (("reply", "replies"), ("positive_reply", "positive_replies"), ("meeting", "meetings")):
        rate = (row[events] or 0) / n if n else None
        out[f"{name}_rate"] = rate
        cost = out.get("cost_per_message")
        out[f"cost_per_{name}"] = cost / rate if cost is not None and rate else None
    return out


def build_snapshot(rows: Iterable[Mapping[str, Any]], *, generated_at: str, metric: str = DEFAULT_QUALITY_METRIC,
                   alpha: float = DEFAULT_ALPHA, registry_models: Sequence[Sequence[Any]] = (),
                   tokens: Mapping[str, tuple[float, float]] | None = None,
                   costs: Iterable[Mapping[str, Any]] = (), executions: Iterable[Mapping[str, Any]] = ()
                   ) -> dict[str, Any]:
    models: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        models.setdefault(row["organization_id"], {}).setdefault(row["task_type"], {})[row["model_id"]] = \
            measured_entry(row, metric, alpha)
    by_org_costs: dict[str, list] = {}
    for row in costs:
        by_org_costs.setdefault(row["organization_id"], []).append({k: _plain(v) for k, v in row.items()})
    by_org_runs: dict[str, list] = {}
    for row in executions:
        by_org_runs.setdefault(row["organization_id"], []).append({k: _plain(v) for k, v in row.items()})
    return {"version": SNAPSHOT_VERSION, "generated_at": generated_at, "quality_metric": metric, "alpha": alpha,
            "registry_models": [list(r) for r in registry_models],
            "tokens": {k: list(v) for k, v in (tokens or {}).items()}, "models": models,
            "costs": by_org_costs, "executions": by_org_runs}


def empty_snapshot() -> dict[str, Any]:
    return build_snapshot((), generated_at="")


def measured_for(snapshot: Mapping[str, Any], organization_id: str | None, task_type: str, model_id: str,
                 min_org_messages: int = MIN_ORG_MESSAGES) -> Measured | None:
    """The organization's own measurements of the model on the task when it has at least
    ``min_org_messages`` mature messages there, else every organization's; None when never sent."""
    models = snapshot.get("models") or {}
    own = ((models.get(organization_id) or {}).get(task_type) or {}).get(model_id) if organization_id else None
    if own is not None and (own.get("mature_messages") or 0) >= min_org_messages:
        return Measured.from_dict(own)
    pooled = ((models.get(ALL_ORGANIZATIONS) or {}).get(task_type) or {}).get(model_id)
    if pooled is not None:
        return Measured.from_dict(pooled)
    return Measured.from_dict(own) if own is not None else None


def catalog_cost(entry: CatalogEntry, tokens: tuple[float, float]) -> float:
    prompt, completion = tokens
    return float((Decimal(str(prompt)) * entry.input_per_million + Decimal(str(completion)) * entry.output_per_million)
                 / 1_000_000)


def task_tokens(snapshot: Mapping[str, Any], task_type: str) -> tuple[float, float]:
    tokens = snapshot.get("tokens") or {}
    found = tokens.get(task_type) or tokens.get(ALL_TASKS)
    return (float(found[0]), float(found[1])) if found else (DEFAULT_PROMPT_TOKENS, DEFAULT_COMPLETION_TOKENS)


def catalog_models_for(catalog: Catalog, task_type: str) -> list[str]:
    """The catalog's models for a task type (every model for ``all``), sorted."""
    return sorted(m for m, e in catalog.entries.items() if task_type == ALL_TASKS or task_type in e.task_types)


def candidates(catalog: Catalog, snapshot: Mapping[str, Any], organization_id: str | None, task_type: str,
               model_ids: Sequence[str] | None = None, min_org_messages: int = MIN_ORG_MESSAGES) -> list[Candidate]:
    """The routing candidates: ``model_ids`` (each must be in the catalog; an empty list is an
    error) or, when None, the catalog's models for the task type."""
    if model_ids is not None:
        if not model_ids:
            raise ChoiceError("no_candidates", "the candidate list is empty (candidates= names no model)")
        for model_id in model_ids:
            if catalog.get(model_id) is None:
                raise unknown_model(model_id, catalog.entries)
        ids = list(dict.fromkeys(model_ids))
    else:
        ids = catalog_models_for(catalog, task_type)
        if not ids:
            raise ChoiceError("no_candidates", f"no catalog model lists task type {task_type!r}; name the candidates "
                                               "(candidates=a,b) or add the task type to catalog.yaml")
    tokens = task_tokens(snapshot, task_type)
    out = []
    for model_id in ids:
        entry = catalog.get(model_id)
        assert entry is not None
        out.append(Candidate(model_id=model_id, provider=entry.provider, catalog_cost_per_message=catalog_cost(entry, tokens),
                             typical_latency_ms=entry.typical_latency_ms, context_window=entry.context_window,
                             capabilities=tuple(entry.capabilities),
                             measured=measured_for(snapshot, organization_id, task_type, model_id, min_org_messages)))
    return out


def catalog_rows(catalog: Catalog, snapshot: Mapping[str, Any], organization_id: str | None = None,
                 task_type: str | None = None) -> list[dict[str, Any]]:
    """The catalog as rows (``GET /models``, ``flywheel models``): each model with its prices,
    context window, latency, capabilities and task types, and its measured quality and cost where
    known (the organization's own when given and measured, else every organization's, over all
    task types unless ``task_type`` is given)."""
    rows = []
    task = task_type or ALL_TASKS
    for model_id in catalog_models_for(catalog, task):
        entry = catalog.entries[model_id]
        models = snapshot.get("models") or {}
        measured = None
        scope = None
        for org in ([organization_id] if organization_id else []) + [ALL_ORGANIZATIONS]:
            found = ((models.get(org) or {}).get(task) or {}).get(model_id)
            if found is not None:
                measured, scope = found, org
                break
        rows.append({
            "model_id": model_id, "provider": entry.provider,
            "input_per_million": float(entry.input_per_million), "output_per_million": float(entry.output_per_million),
            "context_window": entry.context_window, "typical_latency_ms": entry.typical_latency_ms,
            "capabilities": list(entry.capabilities), "task_types": list(entry.task_types),
            "fine_tuned": entry.fine_tuned, "base_model": entry.base_model,
            "prices_as_of": entry.prices_as_of.isoformat() if entry.prices_as_of else None,
            "measured": None if measured is None else {
                "scope": scope, "task_type": task, "messages": measured.get("messages"),
                "mature_messages": measured.get("mature_messages"),
                "quality_metric": snapshot.get("quality_metric"), "quality": measured.get("quality"),
                "quality_low": measured.get("quality_low"), "quality_high": measured.get("quality_high"),
                "reply_rate": measured.get("reply_rate"), "positive_reply_rate": measured.get("positive_reply_rate"),
                "cost_per_message": measured.get("cost_per_message"), "cost_per_reply": measured.get("cost_per_reply"),
                "cost_per_positive_reply": measured.get("cost_per_positive_reply"),
                "latency_ms_p50": measured.get("latency_ms_p50"), "latency_ms_p95": measured.get("latency_ms_p95")}})
    return rows


COMPARE_METRICS = ("reply_rate", "positive_reply_rate", "meeting_rate")
_EVENTS = {"reply_rate": "replies", "positive_reply_rate": "positive_replies", "meeting_rate": "meetings"}


def organization_models(snapshot: Mapping[str, Any], organization_id: str, task_type: str = ALL_TASKS
                        ) -> dict[str, dict[str, Any]]:
    """The organization's own measurements per model for a task type (``all``: every task type)."""
    return dict(((snapshot.get("models") or {}).get(organization_id) or {}).get(task_type) or {})


def compare(measured: Mapping[str, Mapping[str, Any]], model_ids: Sequence[str], metric: str = "reply_rate",
            alpha: float = 0.05) -> dict[str, Any]:
    """Each model's rate over its mature messages with a Wilson interval, and each against the
    first (the baseline): the difference with a Welch interval and two-sided p-value."""
    from flywheel_pipeline.core.stats.frequentist import welch_diff, wilson_interval
    from flywheel_pipeline.core.stats.sufficient import ArmStats

    if metric not in COMPARE_METRICS:
        raise ChoiceError("unknown_metric", f"unknown metric {metric!r}; known: {', '.join(COMPARE_METRICS)}")
    ids = list(dict.fromkeys(model_ids))
    if len(ids) < 2:
        raise ChoiceError("no_candidates", "name at least two models to compare (models=a,b)")
    for model_id in ids:
        if model_id not in measured:
            raise unknown_model(model_id, measured) if measured else ChoiceError(
                "unknown_model", f"{model_id!r} has no measured messages for this organization and task type")
    arms = {}
    rows = []
    for model_id in ids:
        m = measured[model_id]
        n, events = int(m.get("mature_messages") or 0), int(m.get(_EVENTS[metric]) or 0)
        low, high = wilson_interval(events, n, alpha)
        arms[model_id] = ArmStats.proportion(n, events) if n else None
        rows.append({"model_id": model_id, "mature_messages": n, "events": events, "rate": events / n if n else None,
                     "ci_low": low, "ci_high": high, "cost_per_message": m.get("cost_per_message"),
                     "latency_ms_p50": m.get("latency_ms_p50")})
    baseline = ids[0]
    for row in rows[1:]:
        a, b = arms[row["model_id"]], arms[baseline]
        if a is None or b is None or a.n < 2 or b.n < 2:
            row["vs_baseline"] = None
            continue
        try:
            est = welch_diff(a, b, alpha=alpha)
        except ValueError:
            row["vs_baseline"] = None
            continue
        row["vs_baseline"] = {"difference": est.estimate, "ci_low": est.ci_low, "ci_high": est.ci_high,
                              "p_value": est.p_value}
    return {"metric": metric, "baseline": baseline, "confidence": 1 - alpha, "models": rows}
