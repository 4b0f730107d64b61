"""Heuristic scorers of sent messages, one per task family, on a 100-point scale with the
dimension scores they add up from (offline, deterministic, thousands of messages a second).

The seven task families (after AI-GYM's quality scorers): ``email_writing``,
``conversation_response``, ``website_analysis``, ``code_generation``, ``lead_scoring``,
``content_summarization`` and ``data_extraction``. A message's ``task_type`` is mapped to a
family (``cold_email`` and ``follow_up`` are email writing, ``reply`` is a conversation
response, ...); an unknown task type is scored by the ``generic`` scorer, named as such in the
judge's name, never silently as another family.

Every dimension is in [0, 1]; a scorer's score is 100 x the weighted sum of its dimensions
(weights sum to 1). A scorer's ``version`` changes whenever its rules or weights change, so
stored scores say which rules made them. Whether a score means anything is not assumed here:
``judge_calibration`` measures how well it predicts real outcomes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_SENTENCE = re.compile(r"[.!?]+(?:\s|$)")
_NUMBER = re.compile(r"\b\d[\d,.%]*\b")
_URL = re.compile(r"https?://\S+")
_CODE_FENCE = re.compile(r"```")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.MULTILINE)
_MERGE_FIELD = re.compile(r"\{\{\s*\w+\s*\}\}")
_ASK = re.compile(r"\?|\b(would you|are you open|open to|worth a|can we|could we|shall we|let me know|"
                  r"book|schedule|calendar|a quick call|15 minutes|20 minutes|next week)\b", re.IGNORECASE)
_SPAM = ("free", "guarantee", "guaranteed", "act now", "limited time", "risk-free", "winner", "100%",
         "no obligation", "click here", "urgent", "cash", "cheap", "amazing offer", "don't miss")
_GREETING = re.compile(r"^\s*(hi|hello|hey|dear)\b", re.IGNORECASE)
_SIGN_OFF = re.compile(r"\b(best|regards|thanks|cheers|sincerely)\b[,!]?\s*\n", re.IGNORECASE)
_HEDGE = re.compile(r"\b(maybe|perhaps|might|possibly|i think|just wanted)\b", re.IGNORECASE)

GENERIC = "generic"


@dataclass(frozen=True)
class MessageText:
    """What a scorer reads of one message."""
    task_type: str
    subject: str = ""
    body: str = ""
    prompt: str = ""  # system and user prompt, joined
    context: Mapping[str, str] = field(default_factory=dict)  # e.g. first_name, company, industry, role


@dataclass(frozen=True)
class Judgement:
    judge: str  # "heuristic:<family>"
    criteria_version: str
    score: float  # 0-100
    dimensions: dict[str, float]  # each 0-1

    def dimensions_json(self) -> str:
        return json.dumps(self.dimensions, sort_keys=True)


def _words(text: str) -> list[str]:
    return _WORD.findall(text or "")


def _band(n: float, low: float, high: float, fall: float) -> float:
    """1 inside [low, high], falling linearly to 0 over ``fall`` outside it."""
    if low <= n <= high:
        return 1.0
    distance = low - n if n < low else n - high
    return max(0.0, 1.0 - distance / fall)


def _readability(text: str) -> float:
    words = _words(text)
    if not words:
        return 0.0
    per_sentence = len(words) / max(1, len(_SENTENCE.findall(text)))
    long_words = sum(1 for w in words if len(w) >= 10) / len(words)
    return max(0.0, min(1.0, _band(per_sentence, 6, 20, 20) - max(0.0, long_words - 0.15) * 2))


def _spam_free(text: str) -> float:
    lowered = (text or "").lower()
    hits = sum(lowered.count(w) for w in _SPAM) + (text or "").count("!!") + \
        sum(1 for w in _words(text) if len(w) > 3 and w.isupper())
    return max(0.0, 1.0 - 0.25 * hits)


def _personalization(m: MessageText) -> float:
    """Names of the recipient's context in the text (first name, company, industry, role), or
    merge fields that will be filled with them."""
    text = f"{m.subject}\n{m.body}".lower()
    values = [v.lower() for k, v in m.context.items()
              if k in ("first_name", "company", "industry", "role") and isinstance(v, str) and len(v) > 1]
    found = sum(1 for v in values if v.replace("_", " ") in text or v in text)
    merge = 1 if _MERGE_FIELD.search(text) else 0
    return min(1.0, 0.35 * found + 0.35 * merge)


def _specificity(text: str) -> float:
    words = _words(text)
    if not words:
        return 0.0
    numbers = len(_NUMBER.findall(text))
    capitalised = sum(1 for w in words[1:] if w[0].isupper())  # names, products, places
    return min(1.0, 0.25 * numbers + 0.08 * capitalised)


def _links(text: str, most: int) -> float:
    return max(0.0, 1.0 - 0.3 * max(0, len(_URL.findall(text)) - most))


def _email(m: MessageText) -> dict[str, float]:
    body_words = len(_words(_URL.sub("", m.body)))
    subject_words = len(_words(m.subject))
    return {
        "personalization": _personalization(m),
        "specificity": _specificity(m.body),
        "length": _band(body_words, 50, 125, 100),
        "subject": _band(subject_words, 2, 8, 6) if m.subject else 0.0,
        "clear_ask": 1.0 if _ASK.search(m.body) else 0.0,
        "spam_free": min(_spam_free(f"{m.subject}\n{m.body}"), _links(m.body, 1)),
        "readability": _readability(m.body),
    }


def _conversation(m: MessageText) -> dict[str, float]:
    prompt_words = {w.lower() for w in _words(m.prompt) if len(w) > 4}
    body_words = {w.lower() for w in _words(m.body)}
    relevance = len(prompt_words & body_words) / max(1, min(len(prompt_words), 8))
    return {
        "relevance": min(1.0, relevance),
        "length": _band(len(_words(m.body)), 20, 90, 80),
        "clear_ask": 1.0 if _ASK.search(m.body) else 0.0,
        "tone": max(0.0, 1.0 - 0.25 * len(_HEDGE.findall(m.body))),
        "personalization": _personalization(m),
        "spam_free": _spam_free(m.body),
    }


def _structured(m: MessageText) -> dict[str, float]:
    text = m.body
    return {
        "structure": min(1.0, 0.25 * len(_BULLET.findall(text)) + (0.5 if "\n\n" in text else 0.0)),
        "specificity": _specificity(text),
        "length": _band(len(_words(text)), 60, 400, 400),
        "readability": _readability(text),
    }


def _summary(m: MessageText) -> dict[str, float]:
    source, summary = len(_words(m.prompt)), len(_words(m.body))
    ratio = summary / source if source else 1.0
    return {"compression": _band(ratio, 0.05, 0.35, 0.5), "readability": _readability(m.body),
            "specificity": _specificity(m.body), "structure": _structured(m)["structure"]}


def _extraction(m: MessageText) -> dict[str, float]:
    text = m.body.strip()
    try:
        parsed = json.loads(text)
        valid = 1.0
        fields = len(parsed) if isinstance(parsed, dict | list) else 0
    except ValueError:
        valid, fields = 0.0, 0
    return {"valid_json": valid, "fields": min(1.0, fields / 5), "no_prose": 1.0 if text[:1] in "{[" else 0.0}


def _code(m: MessageText) -> dict[str, float]:
    text = m.body
    fenced = len(_CODE_FENCE.findall(text)) >= 2
    lines = [line for line in text.splitlines() if line.strip()]
    commented = sum(1 for line in lines if line.lstrip().startswith(("#", "//"))) / max(1, len(lines))
    return {"code_block": 1.0 if fenced else 0.0, "comments": _band(commented, 0.05, 0.3, 0.3),
            "length": _band(len(lines), 3, 80, 120), "explanation": 1.0 if _SENTENCE.search(text) else 0.0}


def _lead_scoring(m: MessageText) -> dict[str, float]:
    text = m.body
    score_given = 1.0 if re.search(r"\b(score|rating)\b\D{0,20}\d", text, re.IGNORECASE) else 0.0
    return {"score_given": score_given, "reasons": min(1.0, 0.34 * len(_BULLET.findall(text))),
            "specificity": _specificity(text), "readability": _readability(text)}


def _generic(m: MessageText) -> dict[str, float]:
    return {"length": _band(len(_words(m.body)), 20, 300, 300), "readability": _readability(m.body),
            "spam_free": _spam_free(m.body), "specificity": _specificity(m.body)}


@dataclass(frozen=True)
class Scorer:
    family: str
    version: str
    dimensions: Callable[[MessageText], dict[str, float]]
    weights: dict[str, float]

    def judge(self, message: MessageText) -> Judgement:
        dims = self.dimensions(message)
        score = 100.0 * sum(self.weights[name] * value for name, value in dims.items())
        return Judgement(f"heuristic:{self.family}", self.version, round(score, 2),
                         {k: round(v, 4) for k, v in dims.items()})


SCORERS: dict[str, Scorer] = {s.family: s for s in (
    Scorer("email_writing", "1", _email, {"personalization": 0.2, "specificity": 0.1, "length": 0.15,
                                          "subject": 0.1, "clear_ask": 0.2, "spam_free": 0.15,
                                          "readability": 0.1}),
    Scorer("conversation_response", "1", _conversation, {"relevance": 0.25, "length": 0.15, "clear_ask": 0.2,
                                                         "tone": 0.15, "personalization": 0.1,
                                                         "spam_free": 0.15}),
    Scorer("website_analysis", "1", _structured, {"structure": 0.3, "specificity": 0.3, "length": 0.2,
                                                  "readability": 0.2}),
    Scorer("code_generation", "1", _code, {"code_block": 0.4, "comments": 0.2, "length": 0.2, "explanation": 0.2}),
    Scorer("lead_scoring", "1", _lead_scoring, {"score_given": 0.4, "reasons": 0.3, "specificity": 0.15,
                                                "readability": 0.15}),
    Scorer("content_summarization", "1", _summary, {"compression": 0.35, "readability": 0.25, "specificity": 0.2,
                                                    "structure": 0.2}),
    Scorer("data_extraction", "1", _extraction, {"valid_json": 0.6, "fields": 0.25, "no_prose": 0.15}),
    Scorer(GENERIC, "1", _generic, {"length": 0.3, "readability": 0.3, "spam_free": 0.2, "specificity": 0.2}),
)}

# task_type -> family; anything else is scored by the generic scorer (named "heuristic:generic")
TASK_FAMILIES: dict[str, str] = {
    "cold_email": "email_writing", "follow_up": "email_writing", "email": "email_writing",
    "email_writing": "email_writing", "outreach": "email_writing", "reply": "conversation_response",
    "conversation_response": "conversation_response", "chat": "conversation_response",
    "website_analysis": "website_analysis", "code_generation": "code_generation", "lead_scoring": "lead_scoring",
    "content_summarization": "content_summarization", "summary": "content_summarization",
    "data_extraction": "data_extraction", "extraction": "data_extraction",
}


def scorer_for(task_type: str | None) -> Scorer:
    return SCORERS[TASK_FAMILIES.get((task_type or "").strip().lower(), GENERIC)]


def judge_message(message: MessageText) -> Judgement:
    return scorer_for(message.task_type).judge(message)


def judge_versions() -> dict[str, str]:
    """Every heuristic judge's name and criteria version."""
    return {f"heuristic:{s.family}": s.version for s in SCORERS.values()}
