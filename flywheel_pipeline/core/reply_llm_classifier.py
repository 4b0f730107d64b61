"""The ``llm`` reply classifier: any OpenAI-compatible chat endpoint answers in a JSON schema
(intent, sentiment, confidence, a one-line reason per reply), with few-shot examples from the
shipped tuning split, in batches, retried, within a per-run request budget, cached by reply
hash and classifier version.

Only the reply's own words are sent (core/reply_text.py: no quoted mail, no signature), and
auto-reply headers and empty bodies are decided without a call. The stored sentiment is the
intent's (positive = meeting_request + interested, as for every classifier); the model's own
sentiment and reason stay in the cache. When the budget is spent, or a batch still fails after
its retries, those replies are classified by the offline ``cue_model`` and stored under *its*
name, so the next run with budget asks the model again. Its accuracy cannot be measured
offline: measure it on your own labelled replies with ``flywheel replies eval --classifier
llm --file ...`` (docs/replies.md).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from flywheel_pipeline.core.reply_classifier import (INTENTS, SENTIMENT_OF_INTENT, SENTIMENTS, ReplyClassifier,
                                                     ReplyIntent, auto_reply_reason)
from flywheel_pipeline.core.reply_llm_cache import CachedLabel, ReplyLabelCache, reply_hash
from flywheel_pipeline.core.reply_text import own_text

PROMPT_VERSION = "1"
FEW_SHOT_PER_INTENT = 2
MAX_REPLY_CHARS = 1_500  # of a reply's own words sent to the model

SYSTEM_PROMPT = """You label replies to B2B sales outreach emails. For each reply give:
- intent, one of:
  meeting_request: wants a call, demo or meeting, proposes or accepts a time
  interested: wants to go on without a meeting yet (pricing, a quote, a deck, a trial, more
    information), also conditional interest that asks for the next step
  question: asks about the offer or the sender without asking to go on
  referral: points to someone else who decides
  not_now: defers (timing, budget, a contract that runs on), even when warm
  not_interested: declines without asking to stop emails
  unsubscribe_request: asks to be removed or to stop
  hostile: hostile or sarcastic, spam complaints
  wrong_person: left the company, wrong address, not a buyer
  auto_reply: out-of-office or other automatic answer
  other: nothing to understand
- sentiment: positive (meeting_request, interested), negative (not_interested,
  unsubscribe_request, hostile), else neutral
- confidence: 0 to 1
- reason: one short line
Answer for every reply, by its number n."""

RESPONSE_SCHEMA = {
    "name": "reply_labels",
    "strict": True,
    "schema": {
        "type": "object",
        "additionalProperties": False,
        "required": ["labels"],
        "properties": {"labels": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["n", "intent", "sentiment", "confidence", "reason"],
            "properties": {"n": {"type": "integer"}, "intent": {"type": "string", "enum": list(INTENTS)},
                           "sentiment": {"type": "string", "enum": list(SENTIMENTS)},
                           "confidence": {"type": "number"}, "reason": {"type": "string"}}}}},
    },
}


class AnswerError(ValueError):
    """The model's answer does not fit the schema or the batch."""


@dataclass(frozen=True)
class LLMSettings:
    model: str
    base_url: str | None = None
    api_key: str | None = None
    batch_size: int = 20
    max_requests: int = 200        # per classifier instance, i.e. per run
    max_attempts: int = 3          # per batch
    backoff_s: float = 1.0         # doubled per retry
    timeout_s: float = 60.0
    cache_path: Path | None = None


def few_shot_examples(per_intent: int = FEW_SHOT_PER_INTENT) -> list[tuple[str, str]]:
    """(own words, intent) pairs from the shipped tuning split: the first ``per_intent`` of
    each intent in file order."""
    from flywheel_pipeline.core.reply_eval_set import shipped_set

    taken: dict[str, int] = {}
    examples = []
    for row in shipped_set("tuning"):
        if taken.get(row.intent, 0) < per_intent:
            words = own_text(row.text)[:400]
            if words:
                examples.append((words, row.intent))
                taken[row.intent] = taken.get(row.intent, 0) + 1
    return examples


def parse_answer(content: str, numbers: Sequence[int]) -> dict[int, CachedLabel]:
    """The labels in one answer, one per asked number (raises :class:`AnswerError`)."""
    try:
        answer = json.loads(content)
    except json.JSONDecodeError as exc:
        raise AnswerError(f"answer is not JSON: {exc.msg}") from None
    labels = answer.get("labels") if isinstance(answer, dict) else None
    if not isinstance(labels, list):
        raise AnswerError("answer has no 'labels' array")
    out: dict[int, CachedLabel] = {}
    for item in labels:
        if not isinstance(item, dict) or item.get("n") not in numbers:
            raise AnswerError(f"label for an unknown reply: {item!r:.100}")
        intent, sentiment, confidence = item.get("intent"), item.get("sentiment"), item.get("confidence")
        if intent not in INTENTS or sentiment not in SENTIMENTS:
            raise AnswerError(f"bad intent or sentiment: {item!r:.100}")
        if not isinstance(confidence, (int, float)) or not 0 <= confidence <= 1:
            raise AnswerError(f"bad confidence: {item!r:.100}")
        out[item["n"]] = CachedLabel(intent, sentiment, float(confidence), str(item.get("reason", ""))[:300])
    missing = set(numbers) - set(out)
    if missing:
        raise AnswerError(f"no label for replies {sorted(missing)}")
    return out


class LLMReplyClassifier:
    name = "llm"

    def __init__(self, settings: LLMSettings, *, fallback: ReplyClassifier | None = None,
                 examples: Sequence[tuple[str, str]] | None = None) -> None:
        import openai

        self.settings = settings
        self.examples = list(examples) if examples is not None else few_shot_examples()
        digest = hashlib.sha256(json.dumps([PROMPT_VERSION, SYSTEM_PROMPT, RESPONSE_SCHEMA, self.examples]).encode())
        self.version = f"{settings.model}:{PROMPT_VERSION}.{digest.hexdigest()[:8]}"
        self.client = openai.OpenAI(api_key=settings.api_key or "unset", base_url=settings.base_url,
                                    timeout=settings.timeout_s, max_retries=0)
        self.cache = ReplyLabelCache(settings.cache_path) if settings.cache_path else None
        self._fallback = fallback
        self.requests = 0        # chat calls made by this instance (the budget counts them)
        self.cache_hits = 0
        self.fallbacks = 0       # replies left to the offline classifier (budget spent or failures)

    @property
    def fallback(self) -> ReplyClassifier:
        if self._fallback is None:
            from flywheel_pipeline.core.reply_cue_model import CueModelReplyClassifier

            self._fallback = CueModelReplyClassifier()
        return self._fallback

    def classify(self, *, subject: str | None, text: str | bytes | None,
                 headers: Mapping[str, object] | None = None) -> ReplyIntent:
        return self.classify_batch([(subject, text, headers)])[0]

    def classify_batch(self, replies: Sequence[tuple[str | None, str | bytes | None, Mapping[str, object] | None]]
                       ) -> list[ReplyIntent]:
        """Classify many replies with as few calls as the batch size allows."""
        results: list[ReplyIntent | None] = [None] * len(replies)
        asked: dict[int, str] = {}   # position -> own words still to label
        for i, (subject, text, headers) in enumerate(replies):
            reason = auto_reply_reason(headers, subject)
            words = own_text(text)
            if reason is not None:
                results[i] = ReplyIntent("neutral", "auto_reply", 0.99, True, reason)
            elif not any(ch.isalnum() for ch in words):
                results[i] = ReplyIntent("neutral", "other", 0.2, False)
            else:
                asked[i] = words[:MAX_REPLY_CHARS]
        hashes = {i: reply_hash(words) for i, words in asked.items()}
        known = self.cache.get_many(sorted(set(hashes.values())), self.version) if self.cache and hashes else {}
        todo = []
        for i, h in hashes.items():
            if h in known:
                results[i] = self._intent(known[h])
                self.cache_hits += 1
            else:
                todo.append(i)
        for start in range(0, len(todo), self.settings.batch_size):
            batch = todo[start:start + self.settings.batch_size]
            labels = self._ask([asked[i] for i in batch]) if self.requests < self.settings.max_requests else None
            if labels is None:
                for i in batch:
                    subject, text, headers = replies[i]
                    own = self.fallback.classify(subject=subject, text=text, headers=headers)
                    results[i] = replace(own, classifier=self.fallback.name,
                                         classifier_version=str(self.fallback.version))
                    self.fallbacks += 1
                continue
            fresh = {}
            for n, i in enumerate(batch):
                results[i] = self._intent(labels[n])
                fresh[hashes[i]] = labels[n]
            if self.cache:
                self.cache.put_many(fresh, self.version)
        return [r for r in results if r is not None]

    @staticmethod
    def _intent(label: CachedLabel) -> ReplyIntent:
        auto = label.intent == "auto_reply"
        return ReplyIntent(SENTIMENT_OF_INTENT[label.intent], label.intent, round(label.confidence, 4), auto,
                           "auto-reply text" if auto else None)

    def _messages(self, texts: Sequence[str]) -> list[dict[str, str]]:
        shots = "\n".join(f"- {json.dumps(words, ensure_ascii=False)} -> {intent}" for words, intent in self.examples)
        replies = json.dumps([{"n": n, "reply": words} for n, words in enumerate(texts)], ensure_ascii=False)
        return [{"role": "system", "content": f"{SYSTEM_PROMPT}\n\nLabelled examples:\n{shots}"},
                {"role": "user", "content": f"Label these replies:\n{replies}"}]

    def _ask(self, texts: Sequence[str]) -> dict[int, CachedLabel] | None:
        """One batch, retried on errors and bad answers; None when it cannot be had (budget
        spent or every attempt failed)."""
        import openai

        delay = self.settings.backoff_s
        for attempt in range(self.settings.max_attempts):
            if self.requests >= self.settings.max_requests:
                return None
            self.requests += 1
            try:
                response = self.client.chat.completions.create(
                    model=self.settings.model, messages=self._messages(texts), temperature=0,
                    response_format={"type": "json_schema", "json_schema": RESPONSE_SCHEMA})
                return parse_answer(response.choices[0].message.content or "", range(len(texts)))
            except (openai.APIError, AnswerError):
                if attempt + 1 < self.settings.max_attempts:
                    time.sleep(delay)
                    delay *= 2
        return None
