"""The LLM judge of sent messages: deepeval's G-Eval with per-task criteria through any
OpenAI-compatible endpoint (core/geval_judge.py's model), with a per-run budget in USD.

One judge call per message: G-Eval's evaluation steps are given (not generated), and its
results prompt is extended to ask, in the same JSON object, for an integer 0-10 per named
criterion, strengths, weaknesses and suggestions. G-Eval's own score (0-10, normalized by
deepeval to 0-1) becomes the overall score on 0-100; each criterion is stored 0-1 like the
heuristic judges' dimensions. The reply is validated here, not trusted: a reply that is not
JSON, a score or criterion outside 0-10 or a missing criterion is an error with a reason code,
retried, and never a score of 0.

Criteria sets by task family (``CRITERIA``): ``email_writing`` (cold e-mails, follow-ups),
``conversation_response`` (replies) and ``generic`` for every other task type, named as such in
the judge's name ``geval:<family>@<model>``. A criteria set's ``version`` changes whenever its
text changes, so every stored score says which criteria made it.

Budget: before each call the largest cost it can have is reserved (every prompt token at most
one UTF-8 byte of the request's text, plus the chat overhead, and ``max_tokens`` of reply at
the catalog's prices); the reply's reported usage then replaces the reservation. A call that
would take the reserved and spent total past the budget is not made (:class:`BudgetExhausted`),
so a run never spends more than its budget at the catalog's prices; an attempt that got no usage
back (a timeout) is charged its reservation, because the provider may have billed it.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from flywheel_pipeline.core.catalog import Price, message_cost
from flywheel_pipeline.core.message_scorers import GENERIC, TASK_FAMILIES

JUDGE_PREFIX = "geval:"
EMAIL_FAMILY = "email_writing"  # the criteria the offline evaluation's G-Eval judge applies too
SCORE_MAX = 10  # G-Eval's integer scale for the score and each criterion
CHAT_OVERHEAD_TOKENS = 16  # per request: role markers and reply priming, generously
MAX_PROMPT_CHARS = 2_000  # of the writer's system and user prompt shown to the judge (the rest is cut)

# reason codes of an unjudged message; the transient ones are tried again by the next run
TIMEOUT, CONNECTION_ERROR, HTTP_ERROR = "timeout", "connection_error", "http_error"
NON_JSON, OUT_OF_RANGE, INVALID_REPLY = "non_json", "score_out_of_range", "invalid_reply"
JUDGE_ERROR = "judge_error"  # anything else the judging of one message raised (its type and words in critique)
TRANSIENT_REASONS = (TIMEOUT, CONNECTION_ERROR, HTTP_ERROR)
UNJUDGED_REASONS = (TIMEOUT, CONNECTION_ERROR, HTTP_ERROR, NON_JSON, OUT_OF_RANGE, INVALID_REPLY, JUDGE_ERROR)
# what a call can end with besides a verdict or a reason: the budget did not allow it (nothing is recorded)
BUDGET = "budget"
# HTTP statuses that say the judge is misconfigured (key, model, URL): the run fails, nothing is recorded
FATAL_STATUSES = (401, 403, 404)


@dataclass(frozen=True)
class JudgeCriteria:
    """G-Eval's criteria and evaluation steps for one task family, and the named criteria scored."""
    family: str
    version: str
    criteria: str
    steps: tuple[str, ...]
    dimensions: tuple[str, ...]


CRITERIA: dict[str, JudgeCriteria] = {c.family: c for c in (
    JudgeCriteria(
        "email_writing", "1",
        "How likely is this B2B sales e-mail (a cold e-mail or a follow-up) to earn a positive reply from the "
        "recipient described in the input, while staying honest and respectful?",
        ("personalization: check that the e-mail speaks to the recipient's own situation (name, company, role, "
         "industry given in the input), not to a generic audience.",
         "relevance: check that what is offered fits the recipient's likely needs; a follow-up builds on the "
         "earlier contact instead of repeating it.",
         "clarity: reward a short, specific, readable e-mail (about 50 to 125 words) with a subject that fits it.",
         "call_to_action: check for exactly one clear, low-friction ask.",
         "tone: penalize spam-like wording, pressure tactics, invented facts and excessive flattery."),
        ("personalization", "relevance", "clarity", "call_to_action", "tone")),
    JudgeCriteria(
        "conversation_response", "1",
        "How well does this response answer the person it replies to (the conversation in the input) and move "
        "the conversation towards a useful next step?",
        ("relevance: check that the response answers what the person actually said or asked.",
         "helpfulness: reward concrete, correct information; penalize evasion and invented facts.",
         "tone: reward a natural, respectful tone that matches the person's; penalize pressure and hedging.",
         "next_step: check for one clear, easy next step.",
         "concision: reward a response no longer than it needs to be."),
        ("relevance", "helpfulness", "tone", "next_step", "concision")),
    JudgeCriteria(
        GENERIC, "1",
        "How well does the output do what the instructions in the input ask, for the person it is written for? "
        "(Generic criteria: the task type has no criteria of its own.)",
        ("task_fit: check that the output does what the instructions ask.",
         "clarity: reward clear, well-organized, readable text.",
         "accuracy: penalize invented facts and claims the input does not support.",
         "tone: reward a tone suited to the recipient; penalize spam-like or pressuring wording."),
        ("task_fit", "clarity", "accuracy", "tone")),
)}


def family_for(task_type: str | None) -> str:
    """The criteria family of a task type: the heuristic's family when it has LLM criteria, else
    generic (mirrors the SQL in warehouse/message_judgements.py)."""
    family = TASK_FAMILIES.get((task_type or "").strip().lower(), GENERIC)
    return family if family in CRITERIA else GENERIC


def judge_name(family: str, model: str) -> str:
    return f"{JUDGE_PREFIX}{family}@{model}"


@dataclass(frozen=True)
class JudgeInput:
    """What the LLM judge reads of one message (all of it is in the content hash)."""
    task_type: str
    subject: str
    body: str
    system_prompt: str
    user_prompt: str
    context: Mapping[str, str] = field(default_factory=dict)  # first_name, company, industry, role

    def test_case(self) -> tuple[str, str]:
        """(G-Eval input, actual output)."""
        lead = ", ".join(f"{k}: {v}" for k, v in self.context.items() if v) or "not given"
        prompts = "\n".join(p for p in (self.system_prompt, self.user_prompt) if p)[:MAX_PROMPT_CHARS]
        given = f"Task type: {self.task_type or 'unknown'}\nRecipient: {lead}\nInstructions the writer was given:\n" \
                f"{prompts or '(none)'}"
        output = f"Subject: {self.subject}\n\n{self.body}" if self.subject else self.body
        return given, output


@dataclass(frozen=True)
class Verdict:
    score: float  # 0-100
    dimensions: dict[str, float]  # each 0-1
    critique: dict[str, Any]  # reason, strengths, weaknesses, suggestions


@dataclass
class Outcome:
    """One message's judgement: a verdict, or the reason it has none (``BUDGET``: not attempted
    to the end, nothing is recorded)."""
    verdict: Verdict | None = None
    reason: str | None = None
    detail: str = ""
    attempts: int = 0
    cost_usd: Decimal = Decimal(0)


class JudgeReplyError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class BudgetExhausted(RuntimeError):
    """The next call could cost more than what is left of the run's budget."""


class JudgeMisconfigured(RuntimeError):
    """The endpoint refuses the judge itself (key, model or URL): no message can be judged."""


def _bounded(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JudgeReplyError(INVALID_REPLY, f"{what} is not a number: {value!r}")
    if not 0 <= value <= SCORE_MAX:
        raise JudgeReplyError(OUT_OF_RANGE, f"{what} {value!r} is outside 0-{SCORE_MAX}")
    return float(value)


def _texts(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise JudgeReplyError(INVALID_REPLY, f"{what} is not a list of strings")
    return [v.strip() for v in value if v.strip()]


def parse_reply(content: str | None, criteria: JudgeCriteria) -> Verdict:
    """The judge model's reply, validated: a JSON object with ``score`` 0-10, ``criteria`` with every
    named criterion 0-10, optional ``reason``, ``strengths``, ``weaknesses``, ``suggestions``."""
    from flywheel_pipeline.core.geval_judge import _json_object

    try:
        data = _json_object(content or "")
    except ValueError as exc:
        raise JudgeReplyError(NON_JSON, str(exc)[:300]) from None
    if not isinstance(data, dict):
        raise JudgeReplyError(NON_JSON, "the reply is not a JSON object")
    score = _bounded(data.get("score"), "score")
    given = data.get("criteria")
    if not isinstance(given, dict):
        raise JudgeReplyError(INVALID_REPLY, "the reply has no 'criteria' object")
    missing = [name for name in criteria.dimensions if name not in given]
    if missing:
        raise JudgeReplyError(INVALID_REPLY, f"criteria missing: {', '.join(missing)}")
    dimensions = {name: round(_bounded(given[name], f"criterion {name}") / SCORE_MAX, 4)
                  for name in criteria.dimensions}
    reason = data.get("reason")
    critique = {"reason": reason.strip() if isinstance(reason, str) else "",
                "strengths": _texts(data.get("strengths"), "strengths"),
                "weaknesses": _texts(data.get("weaknesses"), "weaknesses"),
                "suggestions": _texts(data.get("suggestions"), "suggestions")}
    return Verdict(round(100.0 * score / SCORE_MAX, 2), dimensions, critique)


class Budget:
    """A run's budget in USD: spent (reported usage) plus reserved (calls in flight) never exceeds
    ``limit``."""

    def __init__(self, limit_usd: Decimal):
        if limit_usd <= 0:
            raise ValueError(f"the judge's budget must be above 0 USD, got {limit_usd}")
        self.limit = Decimal(limit_usd)
        self.spent = Decimal(0)
        self.reserved = Decimal(0)
        self.exhausted = False

    def reserve(self, amount: Decimal) -> None:
        if self.spent + self.reserved + amount > self.limit:
            self.exhausted = True
            raise BudgetExhausted(f"the next call could cost up to {amount:.6f} USD; {self.left:.6f} of "
                                  f"{self.limit} USD left")
        self.reserved += amount

    def settle(self, reserved: Decimal, actual: Decimal) -> None:
        self.reserved -= reserved
        self.spent += actual

    @property
    def left(self) -> Decimal:
        return self.limit - self.spent - self.reserved


@dataclass
class _Call:
    """The attempt in progress of one message (a context variable: one per asyncio task)."""
    reserved: Decimal = Decimal(0)
    content: str | None = None
    cost: Decimal = Decimal(0)


_CALL: contextvars.ContextVar[_Call] = contextvars.ContextVar("flywheel_llm_judge_call")


def _template(criteria: JudgeCriteria):
    """G-Eval's results prompt, extended to ask for the named criteria, strengths, weaknesses and
    suggestions in the same JSON object."""
    from deepeval.metrics.g_eval.g_eval import GEvalTemplate

    names = ", ".join(f'"{name}"' for name in criteria.dimensions)
    example = json.dumps({"score": 0, "criteria": {name: 0 for name in criteria.dimensions},
                          "reason": "your concise reason", "strengths": ["..."], "weaknesses": ["..."],
                          "suggestions": ["..."]}, indent=2)

    def generate_evaluation_results(evaluation_steps, test_case_content, parameters) -> str:
        return (
            "You are an evaluator. Given the following evaluation steps, assess the response below and return a "
            "JSON object with these fields:\n\n"
            f'- "score": an integer between 0 and {SCORE_MAX}, {SCORE_MAX} indicating strong alignment with the '
            "evaluation steps and 0 indicating no alignment.\n"
            f'- "criteria": an object with an integer between 0 and {SCORE_MAX} for each of {names} (each '
            "evaluation step names the criterion it checks).\n"
            '- "reason": a brief explanation of the score, referencing details of the input. Do not quote the '
            "score.\n"
            '- "strengths": up to three short strings.\n- "weaknesses": up to three short strings.\n'
            '- "suggestions": up to three concrete changes that would make the response better.\n\n'
            "Only return valid JSON. Do **not** include any extra commentary or text.\n\n---\n\n"
            f"Evaluation Steps:\n{evaluation_steps}\n\nTest Case:\n{test_case_content}\n\n"
            f"Parameters:\n{parameters}\n\n---\n**Example JSON:**\n{example}\n\nJSON:\n")

    return type("FlywheelGEvalTemplate", (GEvalTemplate,),
                {"generate_evaluation_results": staticmethod(generate_evaluation_results)})


@dataclass(frozen=True)
class JudgeSettings:
    model: str
    api_key: str
    base_url: str | None = None
    timeout_s: float = 60.0
    max_attempts: int = 3
    max_tokens: int = 600
    backoff_s: float = 1.0  # before the second attempt; doubles, at most 30 s


class LLMJudge:
    """Judges messages with G-Eval on ``settings.model``, paying from ``budget`` at ``price``.
    Use from one event loop: ``async with`` it, then ``await judge(criteria, message)``."""

    def __init__(self, settings: JudgeSettings, price: Price, budget: Budget):
        if settings.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.settings, self.price, self.budget = settings, price, budget
        self._model = None

    def _ceiling(self, request: dict[str, Any]) -> Decimal:
        text = "".join(m.get("content") or "" for m in request["messages"])
        prompt_tokens = len(text.encode("utf-8")) + CHAT_OVERHEAD_TOKENS
        return message_cost(self.price, prompt_tokens, request.get("max_tokens") or self.settings.max_tokens)

    def _before(self, request: dict[str, Any]) -> None:
        call = _CALL.get()
        amount = self._ceiling(request)
        self.budget.reserve(amount)
        call.reserved = amount

    def _after(self, reply: Any) -> None:
        call = _CALL.get()
        usage = getattr(reply, "usage", None)
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
        cost = message_cost(self.price, prompt, completion)
        actual = call.reserved if cost is None else cost  # no usage reported: charged what it could have cost
        self.budget.settle(call.reserved, actual)
        call.reserved, call.cost = Decimal(0), call.cost + actual
        choices = getattr(reply, "choices", None) or []
        call.content = choices[0].message.content if choices else None

    async def __aenter__(self) -> "LLMJudge":
        from flywheel_pipeline.core.geval_judge import openai_compatible_model

        s = self.settings
        self._model = openai_compatible_model(s.model, s.api_key, s.base_url, timeout_s=s.timeout_s, max_retries=0,
                                              max_tokens=s.max_tokens, before_request=self._before,
                                              after_reply=self._after)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._model is not None:
            await self._model._async.close()
            self._model._sync.close()

    async def _attempt(self, criteria: JudgeCriteria, message: JudgeInput) -> Verdict:
        from deepeval.metrics import GEval
        from deepeval.test_case import LLMTestCase, SingleTurnParams

        metric = GEval(name=f"{criteria.family} quality", criteria=criteria.criteria,
                       evaluation_steps=list(criteria.steps),
                       evaluation_params=[SingleTurnParams.INPUT, SingleTurnParams.ACTUAL_OUTPUT],
                       model=self._model, async_mode=True, verbose_mode=False,
                       evaluation_template=_template(criteria))
        given, output = message.test_case()
        call = _CALL.get()
        try:
            g_score = await metric.a_measure(LLMTestCase(input=given, actual_output=output), _show_indicator=False)
        except (BudgetExhausted, asyncio.CancelledError):
            raise
        except Exception as exc:
            if call.content is None:  # no reply: the transport's error
                raise
            # a reply deepeval could not use: say why in our terms (not JSON, out of range, ...)
            parse_reply(call.content, criteria)
            raise JudgeReplyError(INVALID_REPLY, f"{type(exc).__name__}: {exc}"[:300]) from None
        verdict = parse_reply(call.content, criteria)
        # the overall score is G-Eval's (deepeval normalizes it to 0-1); validated above to be in range
        return Verdict(round(100.0 * float(g_score), 2), verdict.dimensions, verdict.critique)

    async def judge(self, criteria: JudgeCriteria, message: JudgeInput) -> Outcome:
        """Up to ``max_attempts`` calls; the outcome has a verdict, or a reason code (``BUDGET``
        when the budget stopped it before a verdict or a final error)."""
        import openai

        outcome = Outcome()
        for attempt in range(1, self.settings.max_attempts + 1):
            call = _Call()
            token = _CALL.set(call)
            try:
                outcome.verdict = await self._attempt(criteria, message)
                outcome.reason, outcome.detail = None, ""
                outcome.attempts = attempt
                return outcome
            except BudgetExhausted as exc:
                outcome.reason, outcome.detail = BUDGET, str(exc)
                return outcome
            except JudgeReplyError as exc:
                outcome.reason, outcome.detail = exc.reason, exc.detail
            except openai.APITimeoutError as exc:
                outcome.reason, outcome.detail = TIMEOUT, f"no answer within {self.settings.timeout_s} s ({exc})"
            except openai.APIConnectionError as exc:
                outcome.reason, outcome.detail = CONNECTION_ERROR, str(exc)[:300]
            except openai.APIStatusError as exc:
                if exc.status_code in FATAL_STATUSES:
                    raise JudgeMisconfigured(f"the judge endpoint answered {exc.status_code} for model "
                                             f"{self.settings.model!r}: {str(exc)[:200]}") from None
                outcome.reason, outcome.detail = HTTP_ERROR, f"HTTP {exc.status_code}: {str(exc)[:300]}"
            except Exception as exc:  # noqa: BLE001 - one message's surprise must not stop the others
                outcome.reason, outcome.detail = JUDGE_ERROR, f"{type(exc).__name__}: {exc}"[:300]
            finally:
                if call.reserved:  # an attempt that never got a reply: charged what it could have cost
                    self.budget.settle(call.reserved, call.reserved)
                    call.cost += call.reserved
                outcome.cost_usd += call.cost
                outcome.attempts = attempt
                _CALL.reset(token)
            if attempt < self.settings.max_attempts:
                await asyncio.sleep(min(30.0, self.settings.backoff_s * 2 ** (attempt - 1)))
        return outcome
