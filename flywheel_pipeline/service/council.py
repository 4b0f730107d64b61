"""Asking the council's models, concurrently, through their OpenAI-compatible endpoints.

Each seated model is called with the ``openai`` SDK's ``AsyncOpenAI`` (the catalog's ``base_url``
and the key in its ``api_key_env``; core/catalog.endpoint), no SDK retries (a retry would spend
the request's time budget twice), and the whole call bounded by the request's timeout with
``asyncio.wait_for``. A model without a key, one that errors and one that times out are failures
with their reason; the others are answers with latency, the usage the provider reported and its
cost at the catalog's prices. Clients are cached per (base_url, key) for the app's life.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import openai
from openai import AsyncOpenAI

from flywheel_pipeline.core.catalog import Catalog, CatalogEntry, endpoint, load_catalog, message_cost
from flywheel_pipeline.core.council import Answer, CouncilRequest, Failure, Seat, judge_prompt


class ModelClients:
    """AsyncOpenAI clients by (base_url, key), closed with the app."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str | None, str], AsyncOpenAI] = {}

    def get(self, base_url: str | None, key: str) -> AsyncOpenAI:
        client = self._clients.get((base_url, key))
        if client is None:
            # one pool for every concurrent request of this endpoint; the per-request timeout is
            # asyncio.wait_for's, so the SDK's own is only a backstop
            client = AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=600.0,
                                 http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=200,
                                                                                   max_keepalive_connections=50)))
            self._clients[(base_url, key)] = client
        return client

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


def _error(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"the provider answered HTTP {exc.status_code}: {str(exc.message)[:200]}"
    if isinstance(exc, openai.APIConnectionError):
        return f"could not reach the provider: {type(exc.__cause__ or exc).__name__}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


async def ask(clients: ModelClients, seat: Seat, request: CouncilRequest, max_tokens: int, timeout_s: float,
              env: Mapping[str, str]) -> Answer | Failure:
    base_url, key_env = endpoint(seat.entry)
    key = env.get(key_env) if key_env else None
    if not key:
        return Failure(seat.model_id, f"no API key: set {key_env or 'api_key_env in the catalog entry'}")
    client = clients.get(base_url, key)
    started = time.perf_counter()

    def elapsed_ms() -> float:
        return round((time.perf_counter() - started) * 1000, 1)
    try:
        reply = await asyncio.wait_for(client.chat.completions.create(
            model=seat.model_id, messages=[m.model_dump() for m in request.messages], max_tokens=max_tokens),
            timeout_s)
    except asyncio.TimeoutError:
        return Failure(seat.model_id, f"timed out after {timeout_s:g}s", elapsed_ms())
    except Exception as exc:  # noqa: BLE001 - any provider failure is this model's, named in the answer
        return Failure(seat.model_id, _error(exc), elapsed_ms())
    latency = elapsed_ms()
    text = (reply.choices[0].message.content or "") if reply.choices else ""
    usage = reply.usage
    prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage is not None else (None, None)
    cost = message_cost(Catalog({seat.entry.model_id: seat.entry}).price(seat.entry.model_id), prompt, completion)
    return Answer(seat.model_id, text, latency, prompt, completion, cost)


async def ask_all(clients: ModelClients, seats: Sequence[Seat], request: CouncilRequest, max_tokens: int,
                  timeout_s: float, env: Mapping[str, str] | None = None) -> tuple[list[Answer], list[Failure]]:
    """Every seated model at once; (answers, failures) in the seats' order."""
    env = os.environ if env is None else env
    results = await asyncio.gather(*(ask(clients, s, request, max_tokens, timeout_s, env) for s in seats))
    return [r for r in results if isinstance(r, Answer)], [r for r in results if isinstance(r, Failure)]


# ---- an LLM judge (G-Eval through deepeval, core/geval_judge.py) --------------------------------

class JudgeFailed(Exception):
    """The LLM judge could not score every answer (the council falls back to the heuristic)."""


def prewarm_llm_judge() -> None:
    """Import deepeval (seconds) in a background thread, so the first council does not pay it."""
    def load() -> None:
        try:
            from flywheel_pipeline.core.geval_judge import _deepeval
            _deepeval()
        except Exception:  # noqa: BLE001 - said when a council needs the judge (JudgeFailed)
            pass
    threading.Thread(target=load, name="deepeval-import", daemon=True).start()


def _geval_score(model_id: str, key: str, base_url: str | None, prompt: str, answer: str, task_type: str) -> float:
    """The answer's score by the same G-Eval criteria (per task family, core/llm_judge.py) that
    message_judgements applies to sent messages, so judge_calibration's verdict on that judge
    (``geval:<family>@<model>``) is the verdict on this one."""
    from flywheel_pipeline.core.geval_judge import GEvalJudge
    from flywheel_pipeline.core.llm_judge import CRITERIA, family_for

    criteria = CRITERIA[family_for(task_type)]
    # one judge per answer: a GEval metric keeps its last result on itself, so it is not shared
    return 100.0 * GEvalJudge(model_id, key, base_url, criteria=criteria.criteria,
                              steps=list(criteria.steps)).score(prompt, answer)


async def llm_scores(entry: CatalogEntry, model_id: str, request: CouncilRequest, answers: Sequence[Answer],
                     timeout_s: float, env: Mapping[str, str] | None = None) -> dict[str, float]:
    """Every answer's G-Eval score (0-100) by ``model_id`` at its catalog endpoint, at once (a
    thread each: deepeval's judge is synchronous), within ``timeout_s``; any failure is
    :class:`JudgeFailed` with the reason."""
    env = os.environ if env is None else env
    base_url, key_env = endpoint(entry)
    key = env.get(key_env) if key_env else None
    if not key:
        raise JudgeFailed(f"no API key for the judge: set {key_env or 'api_key_env in its catalog entry'}")
    prompt = judge_prompt(request.messages)
    try:
        scores = await asyncio.wait_for(asyncio.gather(*(
            asyncio.to_thread(_geval_score, model_id, key, base_url, prompt, a.text, request.task_type)
            for a in answers)), timeout_s)
    except asyncio.TimeoutError:
        raise JudgeFailed(f"the judge did not score every answer within {timeout_s:g}s") from None
    except Exception as exc:  # noqa: BLE001 - any judge failure is said, and the heuristic decides
        raise JudgeFailed(_error(exc)) from exc
    return {a.model_id: round(s, 4) for a, s in zip(answers, scores)}
