"""The AI council (``POST /council``), pure: the request, which models sit, what each may cost,
which judge decides, the strategies, and the preference pairs a clear verdict yields.

Nothing here does I/O: the service asks the models (service/council.py) and hands the answers
to :func:`decide`; the judge trust table comes from the published ``judges.json`` (written by
the ``council_judges`` asset from ``judge_calibration``).

Rules (docs/council.md explains them):

* **Models**: the request's, each in the catalog; else the ``default_count`` cheapest catalog
  models (estimated cost of this request) that list the task type and are not fine-tunes.
* **Cost cap**: before calling, each model's cost is estimated as prompt tokens (counted with
  the model's encoding, core/tokens.py) × input price + ``max_tokens`` × output price. Models are
  admitted cheapest first while the sum stays within the cap; the others are dropped, named,
  with their estimate. Nothing fits: the request is refused.
* **Judge**: the council can run the heuristic scorer of the task's family
  (``heuristic:<family>``, core/message_scorers.py). It is *trusted* when ``judge_calibration``
  has a row for it and the task type (or ``all``) with ``trusted`` true. Otherwise the same scorer
  still ranks the answers (the documented fallback) and the answer says it is untrusted and why.
* **Strategies**: ``judge`` (the best judge score wins), ``vote`` (the answer most models give,
  compared as numbers on numeric tasks and as normalized text otherwise; ties to the best judge
  score), ``average`` (numeric task types only: the mean of the numbers the models answered).
* **Pairs**: under ``judge``, the winner against every other answer it beats by at least
  ``pair_margin`` judge points (and whose text differs) is a preference pair.
"""

from __future__ import annotations

import hashlib
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flywheel_pipeline.core.catalog import Catalog, CatalogEntry, message_cost
from flywheel_pipeline.core.llm_judge import family_for
from flywheel_pipeline.core.llm_judge import judge_name as llm_judge_name
from flywheel_pipeline.core.message_scorers import MessageText, scorer_for
from flywheel_pipeline.core.tokens import count_chat_tokens, counter_for_model

STRATEGIES = ("judge", "vote", "average")
# task types whose answer is a number (a score): the only ones ``average`` accepts, and the ones
# ``vote`` compares as numbers
NUMERIC_TASK_TYPES = ("lead_scoring",)
MAX_MODELS = 8
ALL_TASKS = "all"  # a judge_calibration row over every task type
# What one G-Eval judgement of an answer is estimated to cost: the rubric and template around the
# prompt and the answer (input), and the JSON verdict (output), in tokens.
GEVAL_PROMPT_TOKENS = 450
GEVAL_OUTPUT_TOKENS = 150
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_SUBJECT = re.compile(r"^\s*subject:\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_SPACE = re.compile(r"\s+")
_EDGE_PUNCTUATION = " \t\n.!?,;:'\"`"


class CouncilError(ValueError):
    """A request the council refuses (HTTP 422): ``reason`` is the error code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1, max_length=100_000)


class CouncilRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_type: str = Field(min_length=1, max_length=100)
    messages: list[ChatMessage] = Field(max_length=200)
    models: list[str] | None = Field(None, max_length=MAX_MODELS)
    strategy: str = "judge"
    max_tokens: int | None = Field(None, ge=1, le=16_384)
    max_cost_usd: float | None = Field(None, gt=0, allow_inf_nan=False)
    timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False)

    @field_validator("task_type")
    @classmethod
    def _task(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("task_type is empty")
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("models is an empty list (leave it out for the catalog's default)")
        if len(set(value)) != len(value):
            raise ValueError("models names a model twice")
        return value

    @model_validator(mode="after")
    def _messages(self) -> "CouncilRequest":
        if not any(m.role == "user" for m in self.messages):
            raise ValueError("messages holds no user message")
        return self


def parse_request(payload: Any) -> CouncilRequest:
    """The request, or a :class:`CouncilError` with the reason: ``empty_messages``,
    ``unknown_strategy`` or ``invalid_request``."""
    if not isinstance(payload, dict):
        raise CouncilError("invalid_request", "the body must be a JSON object")
    messages = payload.get("messages")
    if messages is None or messages == []:
        raise CouncilError("empty_messages", "messages is missing or empty: give at least one user message "
                                             "in chat format ({\"role\": \"user\", \"content\": ...})")
    strategy = payload.get("strategy", "judge")
    if strategy not in STRATEGIES:
        raise CouncilError("unknown_strategy", f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    try:
        request = CouncilRequest.model_validate(payload)
    except ValueError as exc:  # pydantic's ValidationError
        errors = getattr(exc, "errors", None)
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors()) \
            if errors else str(exc)
        reason = "empty_messages" if "no user message" in detail else "invalid_request"
        raise CouncilError(reason, detail) from None
    if request.strategy == "average" and not is_numeric(request.task_type):
        raise CouncilError("not_numeric_task", f"strategy 'average' needs a numeric task type "
                                               f"({', '.join(NUMERIC_TASK_TYPES)}), not {request.task_type!r}")
    return request


def is_numeric(task_type: str) -> bool:
    return task_type.strip().lower() in NUMERIC_TASK_TYPES


# ---- models and cost ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Seat:
    """A model admitted to the council, with its estimated cost (its answer, and judging it)."""
    model_id: str
    entry: CatalogEntry
    prompt_tokens: int
    estimate_usd: Decimal
    judge_usd: Decimal = Decimal(0)  # of the estimate, judging the answer (an LLM judge)


@dataclass(frozen=True)
class Dropped:
    model_id: str
    reason: str


def prompt_tokens(model_id: str, messages: Sequence[ChatMessage]) -> int:
    return count_chat_tokens(counter_for_model(model_id), [m.model_dump() for m in messages])


def estimate(entry: CatalogEntry, model_id: str, messages: Sequence[ChatMessage], max_tokens: int
             ) -> tuple[int, Decimal]:
    """(prompt tokens, estimated USD: prompt × input price + max_tokens × output price)."""
    tokens = prompt_tokens(model_id, messages)
    cost = message_cost(Catalog({entry.model_id: entry}).price(entry.model_id), tokens, max_tokens)
    return tokens, cost if cost is not None else Decimal(0)


def judge_estimate(entry: CatalogEntry, model_id: str, messages: Sequence[ChatMessage], max_tokens: int) -> Decimal:
    """The estimated USD of one G-Eval judgement of an answer of at most ``max_tokens`` by ``entry``."""
    tokens = GEVAL_PROMPT_TOKENS + prompt_tokens(model_id, messages) + max_tokens
    cost = message_cost(Catalog({entry.model_id: entry}).price(entry.model_id), tokens, GEVAL_OUTPUT_TOKENS)
    return cost if cost is not None else Decimal(0)


def default_models(catalog: Catalog, task_type: str, count: int, messages: Sequence[ChatMessage],
                   max_tokens: int) -> list[str]:
    """The ``count`` cheapest (estimated for this request; then by id) catalog models that list
    the task type and are not fine-tunes."""
    wanted = task_type.strip().lower()
    listed = [e for e in catalog.entries.values()
              if not e.fine_tuned and wanted in (t.lower() for t in e.task_types)]
    if not listed:
        raise CouncilError("unknown_task_type", f"no catalog model lists task type {task_type!r}; name the "
                                                "council's models in 'models'")
    ranked = sorted(listed, key=lambda e: (estimate(e, e.model_id, messages, max_tokens)[1], e.model_id))
    return [e.model_id for e in ranked[:count]]


def seat_models(catalog: Catalog, model_ids: Sequence[str], messages: Sequence[ChatMessage], max_tokens: int,
                cap_usd: Decimal, judge_usd: Decimal = Decimal(0)) -> tuple[list[Seat], list[Dropped]]:
    """Admit models cheapest first while the estimated total (each model's answer, and
    ``judge_usd`` for judging it) stays within ``cap_usd``; unknown models are refused
    (``unknown_model``), and so is a request where nothing fits (``over_cost_cap``)."""
    unknown = [m for m in model_ids if catalog.get(m) is None]
    if unknown:
        raise CouncilError("unknown_model", f"not in the model catalog: {', '.join(unknown)} "
                                            "(add them to $FLYWHEEL_HOME/catalog.yaml)")
    candidates = []
    for model_id in model_ids:
        entry = catalog.get(model_id)
        tokens, cost = estimate(entry, model_id, messages, max_tokens)
        candidates.append(Seat(model_id, entry, tokens, cost + judge_usd, judge_usd))
    seats, dropped, total = [], [], Decimal(0)
    for seat in sorted(candidates, key=lambda s: (s.estimate_usd, model_ids.index(s.model_id))):
        if total + seat.estimate_usd <= cap_usd:
            seats.append(seat)
            total += seat.estimate_usd
        else:
            judged = f", ${usd(judge_usd)} of it judging the answer" if judge_usd else ""
            dropped.append(Dropped(seat.model_id, f"over the cost cap: estimated ${usd(seat.estimate_usd)} "
                                                  f"({seat.prompt_tokens} prompt tokens + {max_tokens} max_tokens"
                                                  f"{judged}) "
                                                  f"would bring the request to ${usd(total + seat.estimate_usd)}, "
                                                  f"over ${usd(cap_usd)}"))
    if not seats:
        raise CouncilError("over_cost_cap", f"no model fits the cost cap of ${usd(cap_usd)}: "
                                            + "; ".join(f"{d.model_id}: {d.reason}" for d in dropped))
    order = {m: i for i, m in enumerate(model_ids)}
    seats.sort(key=lambda s: order[s.model_id])
    return seats, dropped


def usd(value: Decimal | float | None) -> str | None:
    """A dollar amount as text with up to 8 decimals (no exponent)."""
    if value is None:
        return None
    return f"{Decimal(value):.8f}".rstrip("0").rstrip(".") if Decimal(value) else "0"


# ---- the judge ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class JudgeChoice:
    name: str  # heuristic:<family>, or geval:<family>@<model> (an LLM judge, core/llm_judge.py)
    trusted: bool
    reason: str  # in words: why trusted, or why not and what the council did instead
    model_id: str | None = None  # the LLM judge's model; None for the heuristic scorer

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "trusted": self.trusted, "reason": self.reason}

    def with_note(self, note: str) -> "JudgeChoice":
        return JudgeChoice(self.name, self.trusted, f"{note}; {self.reason}", self.model_id)


def _trusted_rows(rows: list[Mapping[str, Any]], name: str, task_type: str) -> list[Mapping[str, Any]]:
    wanted = {task_type.strip().lower(), ALL_TASKS}
    return [r for r in rows if r.get("judge") == name and str(r.get("task_type") or ALL_TASKS).lower() in wanted
            and r.get("trusted") is True]


def choose_judge(task_type: str, calibration: Mapping[str, Any] | None, llm_judge: str | None = None) -> JudgeChoice:
    """The council's judge, trusted only as ``judge_calibration`` says (``calibration``: the
    published judges.json, None when none is published): the configured LLM judge
    (``geval:<family>@<llm_judge>``, as message_judgements names it) when calibration trusts it for the
    task type, else the
    heuristic scorer of the task's family, trusted or as the untrusted fallback."""
    rows = [r for r in (calibration or {}).get("judges") or [] if isinstance(r, Mapping)]
    if llm_judge:
        llm_name = llm_judge_name(family_for(task_type), llm_judge)  # the judge judge_calibration measures
        trusted = _trusted_rows(rows, llm_name, task_type)
        if trusted:
            best = max(trusted, key=lambda r: (str(r.get("task_type")).lower() != ALL_TASKS, r.get("auc_low") or 0))
            return JudgeChoice(llm_name, True, _trusted_reason(best), llm_judge)
        return choose_judge(task_type, calibration).with_note(
            f"the LLM judge {llm_name} is not trusted by judge_calibration for {task_type}")
    name = f"heuristic:{scorer_for(task_type).family}"
    if calibration is None:
        return JudgeChoice(name, False, "no judge calibration is published (judges.json; the learn job writes it "
                                        f"from judge_calibration): {name} decides as the untrusted fallback")
    rows = [r for r in calibration.get("judges") or [] if isinstance(r, Mapping)]
    if not rows:
        why = calibration.get("reason") or "judge_calibration has no rows"
        return JudgeChoice(name, False, f"{why}: {name} decides as the untrusted fallback")
    wanted = {task_type.strip().lower(), ALL_TASKS}
    own = [r for r in rows if r.get("judge") == name and str(r.get("task_type") or ALL_TASKS).lower() in wanted]
    trusted = _trusted_rows(rows, name, task_type)
    if trusted:
        best = max(trusted, key=lambda r: (str(r.get("task_type")).lower() != ALL_TASKS, r.get("auc_low") or 0))
        return JudgeChoice(name, True, _trusted_reason(best))
    others = sorted({str(r.get("judge")) for r in rows if r.get("trusted") is True and r.get("judge") != name})
    also = f"; trusted but not runnable by the council: {', '.join(others)}" if others else ""
    if own:
        shown = max(own, key=lambda r: r.get("auc_low") or 0)
        why = (f"judge_calibration does not trust {name} for {task_type}: AUC {_f(shown.get('auc'))} "
               f"[{_f(shown.get('auc_low'))}, {_f(shown.get('auc_high'))}] on {shown.get('metric')} "
               f"(n={shown.get('n')})")
    else:
        why = f"judge_calibration has no row for {name} on {task_type}"
    return JudgeChoice(name, False, f"{why}{also}: {name} decides as the untrusted fallback")


def _trusted_reason(row: Mapping[str, Any]) -> str:
    return (f"trusted by judge_calibration: AUC {_f(row.get('auc'))} [{_f(row.get('auc_low'))}, "
            f"{_f(row.get('auc_high'))}] for {row.get('metric')} on {row.get('task_type')} (n={row.get('n')})")


def _f(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "?"


def as_message_text(task_type: str, messages: Sequence[ChatMessage], answer: str) -> MessageText:
    """What the heuristic scorer reads of an answer: a leading ``Subject:`` line is the subject."""
    subject, body = "", answer.strip()
    first, _, rest = body.partition("\n")
    match = _SUBJECT.match(first)
    if match:
        subject, body = match.group(1), rest.strip()
    return MessageText(task_type=task_type, subject=subject, body=body, prompt=judge_prompt(messages))


def judge_prompt(messages: Sequence[ChatMessage]) -> str:
    """The request as a judge is shown it: every non-assistant turn."""
    return "\n".join(m.content for m in messages if m.role != "assistant")


def judge_score(task_type: str, messages: Sequence[ChatMessage], answer: str) -> float:
    """The heuristic judge's score (0-100) of one answer."""
    return scorer_for(task_type).judge(as_message_text(task_type, messages, answer)).score


# ---- the verdict -------------------------------------------------------------------------------

@dataclass
class Answer:
    """One model's answer as the service got it."""
    model_id: str
    text: str
    latency_ms: float
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: Decimal | None  # from the usage the provider reported and the catalog's prices


@dataclass
class Failure:
    model_id: str
    reason: str
    latency_ms: float | None = None


@dataclass
class Candidate:
    model_id: str
    text: str
    score: float | None  # the judge's (0-100); None under ``average``
    value: float | None  # the number answered (numeric task types)
    latency_ms: float
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: Decimal | None

    def as_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "text": self.text, "score": self.score, "value": self.value,
                "latency_ms": round(self.latency_ms, 1), "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "cost_usd": float(self.cost_usd) if self.cost_usd is not None else None}


@dataclass
class Pair:
    preferred: Candidate
    non_preferred: Candidate
    margin: float


@dataclass
class Verdict:
    strategy: str
    chosen: dict[str, Any]
    candidates: list[Candidate]
    failed: list[Failure]
    votes: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)


class NoAnswer(Exception):
    """No model gave a usable answer (HTTP 503): ``failed`` says why each did not."""

    def __init__(self, failed: list[Failure]):
        super().__init__("; ".join(f"{f.model_id}: {f.reason}" for f in failed))
        self.failed = failed


def first_number(text: str) -> float | None:
    match = _NUMBER.search(text or "")
    if match is None:
        return None
    value = float(match.group(0))
    return value if math.isfinite(value) else None


def normalized(text: str) -> str:
    """An answer as votes compare it: case-folded, whitespace collapsed, edge punctuation off."""
    return _SPACE.sub(" ", text.casefold()).strip(_EDGE_PUNCTUATION)


def decide(request: CouncilRequest, answers: Iterable[Answer], failed: Iterable[Failure], *,
           pair_margin: float, scores: Mapping[str, float] | None = None) -> Verdict:
    """The council's verdict from the answers it got (raises :class:`NoAnswer` when none is
    usable). ``scores``: an LLM judge's (0-100) by model id; without them the heuristic judges."""
    failed = list(failed)
    numeric = is_numeric(request.task_type)
    candidates: list[Candidate] = []
    for a in answers:
        value = first_number(a.text) if numeric else None
        if not a.text.strip():
            failed.append(Failure(a.model_id, "empty answer", a.latency_ms))
            continue
        if numeric and value is None:
            failed.append(Failure(a.model_id, "no number in the answer of a numeric task", a.latency_ms))
            continue
        if request.strategy == "average":
            score = None
        elif scores is not None:
            score = scores[a.model_id]
        else:
            score = judge_score(request.task_type, request.messages, a.text)
        candidates.append(Candidate(a.model_id, a.text, score, value, a.latency_ms, a.prompt_tokens,
                                    a.completion_tokens, a.cost_usd))
    if not candidates:
        raise NoAnswer(failed)
    if request.strategy == "average":
        values = [c.value for c in candidates]
        mean = statistics.fmean(values)
        chosen = {"model_id": "average", "text": f"{mean:g}", "score": mean, "score_kind": "mean_value",
                  "models": [c.model_id for c in candidates],
                  "spread": statistics.stdev(values) if len(values) > 1 else 0.0}
        return Verdict("average", chosen, candidates, failed)
    best = max(candidates, key=lambda c: (c.score, -candidates.index(c)))
    if request.strategy == "judge":
        chosen = _chosen(best, best.score, "judge_score")
        pairs = [Pair(best, c, round(best.score - c.score, 4)) for c in candidates
                 if c is not best and best.score - c.score >= pair_margin
                 and normalized(c.text) != normalized(best.text)]
        return Verdict("judge", chosen, candidates, failed, pairs=pairs)
    groups: dict[Any, list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(c.value if numeric else normalized(c.text), []).append(c)
    ranked = sorted(groups.values(), key=lambda g: (-len(g), -max(c.score for c in g), candidates.index(g[0])))
    winner = max(ranked[0], key=lambda c: (c.score, -candidates.index(c)))
    votes = [{"answer": g[0].text if not numeric else g[0].value, "models": [c.model_id for c in g], "count": len(g)}
             for g in ranked]
    chosen = _chosen(winner, round(len(ranked[0]) / len(candidates), 4), "vote_share")
    chosen["judge_score"] = winner.score
    return Verdict("vote", chosen, candidates, failed, votes=votes)


def _chosen(c: Candidate, score: float, kind: str) -> dict[str, Any]:
    return {"model_id": c.model_id, "text": c.text, "score": score, "score_kind": kind}


# ---- preference pairs --------------------------------------------------------------------------

def pair_id(council_id: str, preferred_model: str, non_preferred_model: str) -> str:
    return hashlib.sha256(f"{council_id}\0{preferred_model}\0{non_preferred_model}".encode()).hexdigest()[:32]


def pair_records(request: CouncilRequest, verdict: Verdict, *, council_id: str, organization_id: str | None,
                 judge: JudgeChoice, decided_at: str) -> list[dict[str, Any]]:
    """The landing records (source ``council_pairs``) of a verdict's pairs."""
    messages = [m.model_dump() for m in request.messages]
    return [{"pair_id": pair_id(council_id, p.preferred.model_id, p.non_preferred.model_id),
             "council_id": council_id, "organization_id": organization_id, "task_type": request.task_type,
             "messages": messages, "preferred_model": p.preferred.model_id, "preferred": p.preferred.text,
             "preferred_score": p.preferred.score, "non_preferred_model": p.non_preferred.model_id,
             "non_preferred": p.non_preferred.text, "non_preferred_score": p.non_preferred.score,
             "margin": p.margin, "judge": judge.name, "judge_trusted": judge.trusted,
             "strategy": verdict.strategy, "decided_at": decided_at} for p in verdict.pairs]


def prompt_parts(messages: Sequence[Mapping[str, Any]]) -> tuple[str | None, str]:
    """(system prompt, user prompt) of a chat for the DPO export's prompt: the system messages
    joined; the one user message, or a multi-turn chat written out as ``role: content`` lines."""
    system = "\n\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "system") or None
    turns = [m for m in messages if m.get("role") != "system"]
    if len(turns) == 1:
        return system, str(turns[0].get("content", ""))
    return system, "\n\n".join(f"{m.get('role')}: {m.get('content', '')}" for m in turns)
