"""An LLM judge through deepeval's G-Eval, over any OpenAI-compatible chat endpoint.

G-Eval (Liu et al., 2023) scores one answer against written criteria and evaluation steps;
this judge scores both answers of a pair with the same metric and calls a tie when the
normalized scores differ by less than ``tie_margin`` (one point on G-Eval's 0-10 scale by
default). The steps are given, not generated, so each answer costs one judge call and the
rubric is the same for every pair. The model is reached through the ``openai`` SDK with a
``base_url``, wrapped as a deepeval custom model, so any OpenAI-compatible host (OpenAI,
vLLM, Together, a local server) can judge; JSON mode is requested and the reply validated
against deepeval's schema. deepeval is the optional extra ``[judge]``; its telemetry is
switched off before it is imported.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

JUDGE_PREFIX = "deepeval-geval:"  # a G-Eval judge's name is this and its model id
OUTREACH_CRITERIA = ("How likely is this B2B outreach email to earn a positive reply from the person described "
                     "in the input, while staying honest and respectful?")
OUTREACH_STEPS = [
    "Check that the email is addressed to the recipient's situation (role, company, industry) given in the input.",
    "Check for one clear, low-friction call to action.",
    "Penalize spam-like wording, pressure tactics, invented facts, and excessive length.",
    "Reward plain, readable sentences and a natural tone.",
]


def _deepeval():
    os.environ.setdefault("DEEPEVAL_TELEMETRY_OPT_OUT", "1")
    try:
        import deepeval.metrics  # noqa: F401
        from deepeval.models import DeepEvalBaseLLM
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise RuntimeError("the G-Eval judge needs deepeval: pip install 'flywheel_pipeline[judge]'") from exc
    return DeepEvalBaseLLM


def _json_object(text: str) -> dict[str, Any]:
    """The JSON object in a model reply (some hosts wrap JSON mode output in a code fence)."""
    match = re.search(r"\{.*\}", text or "", re.DOTALL)
    if match is None:
        raise ValueError(f"the judge model's reply holds no JSON object: {text[:200]!r}")
    return json.loads(match.group(0))


def openai_compatible_model(model: str, api_key: str, base_url: str | None, *, timeout_s: float = 60.0,
                            max_retries: int = 2, max_tokens: int | None = None,
                            before_request: Callable[[dict[str, Any]], None] | None = None,
                            after_reply: Callable[[Any], None] | None = None):
    """A deepeval model backed by the openai SDK against ``base_url`` (None = api.openai.com).

    ``max_retries`` is the SDK's own retrying (0: the caller retries); ``max_tokens`` caps each
    reply. ``before_request(request)`` runs before every call (it may raise to stop the call, e.g.
    a budget), ``after_reply(completion)`` after every answered call, before the reply is parsed
    (its usage and raw text, whatever the parsing makes of it)."""
    from openai import AsyncOpenAI, OpenAI

    base = _deepeval()

    class OpenAICompatibleJudgeModel(base):
        def __init__(self) -> None:
            self._sync = OpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=max_retries)
            self._async = AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s,
                                      max_retries=max_retries)
            super().__init__(model)

        def load_model(self):
            return self._sync

        def get_model_name(self) -> str:
            return model

        def _request(self, prompt: str, schema) -> dict[str, Any]:
            extra = {"response_format": {"type": "json_object"}} if schema is not None else {}
            if max_tokens is not None:
                extra["max_tokens"] = max_tokens
            request = {"model": model, "temperature": 0, "messages": [{"role": "user", "content": prompt}], **extra}
            if before_request is not None:
                before_request(request)
            return request

        @staticmethod
        def _answered(reply):
            if after_reply is not None:
                after_reply(reply)
            return reply

        @staticmethod
        def _parse(content: str, schema):
            return content if schema is None else schema.model_validate(_json_object(content))

        def generate(self, prompt: str, schema=None):
            reply = self._answered(self._sync.chat.completions.create(**self._request(prompt, schema)))
            return self._parse(reply.choices[0].message.content, schema)

        async def a_generate(self, prompt: str, schema=None):
            reply = self._answered(await self._async.chat.completions.create(**self._request(prompt, schema)))
            return self._parse(reply.choices[0].message.content, schema)

    return OpenAICompatibleJudgeModel()


class GEvalJudge:
    """:class:`flywheel_pipeline.core.judge.PairwiseJudge` through deepeval's G-Eval."""

    def __init__(self, model: str, api_key: str, base_url: str | None = None, *, tie_margin: float = 0.1,
                 criteria: str = OUTREACH_CRITERIA, steps: list[str] | None = None):
        _deepeval()
        from deepeval.metrics import GEval
        from deepeval.test_case import SingleTurnParams

        self.name = f"{JUDGE_PREFIX}{model}"
        self.tie_margin = tie_margin
        self._metric = GEval(name="Outreach quality", criteria=criteria, evaluation_steps=steps or OUTREACH_STEPS,
                             evaluation_params=[SingleTurnParams.INPUT, SingleTurnParams.ACTUAL_OUTPUT],
                             model=openai_compatible_model(model, api_key, base_url), async_mode=False,
                             verbose_mode=False)

    def score(self, prompt: str, answer: str) -> float:
        from deepeval.test_case import LLMTestCase

        return float(self._metric.measure(LLMTestCase(input=prompt, actual_output=answer), _show_indicator=False))
