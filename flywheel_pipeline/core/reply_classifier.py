"""Reply understanding: auto-reply detection (RFC 3834 and common vendor headers), the
:class:`ReplyClassifier` interface, and the first offline classifier (``rule_based``, first
matching regex wins), kept by name for comparison. The default classifier is
``cue_model`` (core/reply_cue_model.py); core/reply_classifiers.py names them all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

SENTIMENTS = ("positive", "neutral", "negative")
INTENTS = ("meeting_request", "interested", "referral", "question", "not_now",
           "not_interested", "unsubscribe_request", "auto_reply", "other", "wrong_person", "hostile")
# A positive reply wants to go on: a meeting, or more about the offer (pricing, a deck, a
# trial). A question without such a request is neutral (docs/replies.md).
POSITIVE_INTENTS = ("meeting_request", "interested")
SENTIMENT_OF_INTENT = {intent: "positive" if intent in POSITIVE_INTENTS else
                       "negative" if intent in ("not_interested", "unsubscribe_request", "hostile") else "neutral"
                       for intent in INTENTS}

_AUTO_PRECEDENCE = {"auto_reply", "bulk", "junk", "list"}
_AUTO_SUBJECT = re.compile(
    r"^\s*(automatic reply|auto(-|\s)?reply|autoreply|out of (the )?office|ooo\b|abwesenheit|"
    r"réponse automatique|respuesta automática)", re.IGNORECASE)


def _headers_ci(headers: Mapping[str, object] | None) -> dict[str, str]:
    if not headers:
        return {}
    return {str(k).strip().lower(): str(v).strip() for k, v in headers.items() if v is not None}


def auto_reply_reason(headers: Mapping[str, object] | None, subject: str | None = None) -> str | None:
    """Why a reply is automatic, or None for a human reply.

    Headers (case-insensitive): ``Auto-Submitted`` with any value but ``no`` (RFC 3834),
    ``X-Autoreply``, ``X-Autorespond``, ``X-Auto-Response-Suppress`` is *not* used (it is a
    request to others), ``Precedence: auto_reply | bulk | junk | list``. Without headers, a
    subject that starts like an out-of-office notice ("Automatic reply:", "Out of Office").
    """
    h = _headers_ci(headers)
    auto_submitted = h.get("auto-submitted")
    if auto_submitted is not None and auto_submitted.lower() != "no":
        return f"Auto-Submitted: {auto_submitted}"
    for key in ("x-autoreply", "x-autorespond"):
        if key in h:
            return f"{key}: {h[key]}"
    precedence = h.get("precedence", "").lower()
    if precedence in _AUTO_PRECEDENCE:
        return f"Precedence: {precedence}"
    if subject and _AUTO_SUBJECT.search(subject):
        return "out-of-office subject"
    return None


@dataclass(frozen=True)
class ReplyIntent:
    sentiment: str
    intent: str
    confidence: float
    is_auto_reply: bool
    auto_reply_reason: str | None = None
    # set when another classifier than the one asked decided (the llm classifier's offline
    # fallback): the row keeps who really decided, so a later run can ask again
    classifier: str | None = None
    classifier_version: str | None = None


class ReplyClassifier(Protocol):
    name: str
    version: str

    def classify(self, *, subject: str | None, text: str | None,
                 headers: Mapping[str, object] | None) -> ReplyIntent: ...


# Ordered: the first matching rule wins, so stronger and negating signals come first.
_RULES: tuple[tuple[str, str, float, re.Pattern[str]], ...] = tuple(
    (intent, sentiment, conf, re.compile(pattern, re.IGNORECASE))
    for intent, sentiment, conf, pattern in (
        ("unsubscribe_request", "negative", 0.95,
         r"\b(unsubscribe|remove me|take me off|stop (emailing|contacting|sending)|opt(-| )?out|"
         r"do not (contact|email)|don't (contact|email) me)\b"),
        ("not_interested", "negative", 0.9,
         r"\b(not interested|no interest|no thanks|no, thanks|not a (good )?fit|"
         r"we('re| are) (all )?set|already (have|use|using)|not for us|please don't|"
         r"not looking|pass on this|no need)\b"),
        ("not_now", "neutral", 0.7,
         r"\b(not (right )?now|maybe (later|next)|next (quarter|year)|circle back|"
         r"reach out (again )?(in|later)|bad timing|no budget)\b"),
        ("meeting_request", "positive", 0.9,
         r"\b(book(ed)? a (call|meeting|time|demo)|schedule (a|some) (call|time|meeting|demo)|"
         r"let'?s (talk|chat|meet|set up|hop on)|send (me )?(a|an) (invite|calendar)|"
         r"calendly|what time works|when are you (free|available)|happy to (chat|talk|meet)|"
         r"free (on|next)|available (on|next|for a call))\b"),
        ("interested", "positive", 0.8,
         r"\b(interested|sounds (good|great|interesting)|tell me more|learn more|"
         r"send (me )?(more )?(info|details|pricing)|love to|would like to|keen|curious|"
         r"makes sense|good timing)\b"),
        ("referral", "neutral", 0.75,
         r"\b(right person|reach out to|talk to my colleague|cc'?ing|looping in|forwarded (this|your))\b"),
        ("question", "neutral", 0.6, r"\?"),
    )
)


class RuleBasedReplyClassifier:
    """Offline keyword/regex classifier: no model, no network, deterministic."""

    name = "rule_based"
    version = "1"

    def classify(self, *, subject: str | None, text: str | None,
                 headers: Mapping[str, object] | None = None) -> ReplyIntent:
        reason = auto_reply_reason(headers, subject)
        if reason is not None:
            return ReplyIntent("neutral", "auto_reply", 0.99, True, reason)
        body = _strip_quoted(text or "")
        for intent, sentiment, confidence, pattern in _RULES:
            if pattern.search(body):
                return ReplyIntent(sentiment, intent, confidence, False)
        return ReplyIntent("neutral", "other", 0.4, False)


def _strip_quoted(text: str) -> str:
    """Drop the quoted original message so our own words do not classify the reply."""
    kept = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(">"):
            continue
        if re.match(r"^On .+ wrote:$", stripped) or stripped.startswith("-----Original Message"):
            break
        kept.append(line)
    return "\n".join(kept)
