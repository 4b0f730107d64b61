"""The AI council: ``POST /council`` (an organization's key).

Several catalog models answer the same chat at once (service/council.py), the judge scores them
(the heuristic scorer, or the configured LLM judge when calibration trusts it; if that judge
fails, the heuristic, said in the answer) and the strategy picks (core/council.py); a clear verdict's preference pairs land in the
``council_pairs`` landing source, which ingestion loads into the table of that name. Refusals:
422 ``empty_messages``, ``unknown_strategy``, ``unknown_model``, ``not_numeric_task``,
``unknown_task_type``, ``over_cost_cap``, ``invalid_request``; 503 ``council_unavailable`` with
``Retry-After`` when no model answered (each named with its reason) and 503 ``catalog_invalid``
when the catalog overrides file cannot be read.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

from fastapi import APIRouter

from flywheel_pipeline.core.catalog import Catalog, CatalogEntry, CatalogError
from flywheel_pipeline.core.council import (CouncilError, CouncilRequest, JudgeChoice, NoAnswer, choose_judge, decide,
                                            default_models, judge_estimate, pair_records, parse_request, seat_models,
                                            usd)
from flywheel_pipeline.service.council import JudgeFailed, ask_all, llm_scores
from flywheel_pipeline.service.dependencies import JsonBody, State, ThrottledCaller, switchable
from flywheel_pipeline.service.errors import Rejected
from flywheel_pipeline.service.state import ServiceState

router = APIRouter()

RETRY_AFTER_S = 30  # when every model failed


@router.post("/council")
@switchable("council")
async def council(state: State, org: ThrottledCaller, payload: JsonBody) -> dict:
    started = time.perf_counter()
    settings = state.settings
    try:
        request = parse_request(payload)
        catalog = state.catalog(state.model_stats())
        max_tokens = request.max_tokens or settings.council_max_tokens
        cap = Decimal(str(min(request.max_cost_usd or settings.council_max_cost_usd, settings.council_max_cost_usd)))
        judge, judge_entry, judge_usd = _judge(state, request, catalog, max_tokens)
        models = request.models or default_models(catalog, request.task_type, settings.council_models,
                                                  request.messages, max_tokens)
        seats, dropped = seat_models(catalog, models, request.messages, max_tokens, cap, judge_usd)
    except CouncilError as exc:
        raise Rejected(422, exc.reason, exc.detail) from exc
    except CatalogError as exc:
        raise Rejected(503, "catalog_invalid", str(exc)) from exc
    timeout_s = min(request.timeout_s or settings.council_timeout_s, settings.council_timeout_s)
    answers, failed = await ask_all(state.council_clients, seats, request, max_tokens, timeout_s)
    asked_ms = (time.perf_counter() - started) * 1000
    scores = None
    if judge is not None and judge_entry is not None and answers:
        try:
            scores = await llm_scores(judge_entry, judge.model_id, request, answers, timeout_s)
        except JudgeFailed as exc:  # the heuristic decides, and the answer says why
            judge = choose_judge(request.task_type, state.judges.get()).with_note(
                f"the LLM judge {judge.name} failed ({exc})")
    try:
        verdict = decide(request, answers, failed, pair_margin=settings.council_pair_margin, scores=scores)
    except NoAnswer as exc:
        raise Rejected(503, "council_unavailable", "no model answered: " + "; ".join(
            f"{f.model_id}: {f.reason}" for f in exc.failed), {"Retry-After": str(RETRY_AFTER_S)}) from exc
    council_id = uuid.uuid4().hex
    records = pair_records(request, verdict, council_id=council_id, organization_id=org, judge=judge,
                           decided_at=datetime.now(timezone.utc).isoformat()) if judge is not None else []
    if records:
        await state.land("council_pairs", records)
    spent = [c.cost_usd for c in verdict.candidates if c.cost_usd is not None]
    return {
        "council_id": council_id, "task_type": request.task_type, "strategy": verdict.strategy,
        "chosen": verdict.chosen,
        "candidates": [c.as_dict() for c in verdict.candidates],
        "failed": [{"model_id": f.model_id, "reason": f.reason, "latency_ms": f.latency_ms} for f in verdict.failed],
        "dropped": [{"model_id": d.model_id, "reason": d.reason} for d in dropped],
        "votes": verdict.votes,
        "judge": judge.as_dict() if judge is not None else None,
        "pairs_stored": len(records),
        "cost_usd": float(sum(spent, Decimal(0))),
        "cost_estimate_usd": float(sum((s.estimate_usd for s in seats), Decimal(0))),
        "judge_cost_estimate_usd": float(sum((s.judge_usd for s in seats), Decimal(0))),
        "cost_cap_usd": float(cap), "cost_cap": f"${usd(cap)}",
        "timeout_s": timeout_s,
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        "models_ms": round(asked_ms, 1),
    }


def _judge(state: ServiceState, request: CouncilRequest, catalog: Catalog, max_tokens: int
           ) -> tuple[JudgeChoice | None, CatalogEntry | None, Decimal]:
    """(the judge, the LLM judge's catalog entry when it is one, its estimated USD per answer);
    no judge under ``average``. A configured LLM judge missing from the catalog is said, and the
    heuristic decides."""
    if request.strategy == "average":
        return None, None, Decimal(0)
    calibration = state.judges.get()
    judge = choose_judge(request.task_type, calibration, state.settings.council_llm_judge)
    if judge.model_id is None:
        return judge, None, Decimal(0)
    entry = catalog.get(judge.model_id)
    if entry is None:
        return choose_judge(request.task_type, calibration).with_note(
            f"the LLM judge {judge.model_id} is not in the model catalog"), None, Decimal(0)
    return judge, entry, judge_estimate(entry, judge.model_id, request.messages, max_tokens)
