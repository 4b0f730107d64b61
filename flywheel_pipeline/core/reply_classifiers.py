"""The reply classifiers by name, and which one the pipeline uses.

``cue_model`` (default): offline, quoted mail and signatures stripped, words and cues weighed
by a linear model trained on the shipped tuning split (core/reply_cue_model.py).
``rule_based``: the first offline classifier, first matching regex wins (kept for comparison).
``llm``: any OpenAI-compatible endpoint (core/reply_llm_classifier.py), configured by
``FLYWHEEL_REPLY_LLM_MODEL`` (required), ``FLYWHEEL_REPLY_LLM_BASE_URL``,
``FLYWHEEL_REPLY_LLM_API_KEY``, ``FLYWHEEL_REPLY_LLM_BATCH_SIZE`` (default 20) and
``FLYWHEEL_REPLY_LLM_MAX_REQUESTS`` (per run, default 200); answers cached in
``$FLYWHEEL_HOME/cache/reply_llm.sqlite``.

The pipeline's classifier is the ``reply_intents`` asset's ``classifier`` config, else the
``FLYWHEEL_REPLY_CLASSIFIER`` environment variable, else ``cue_model``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from flywheel_pipeline.core.reply_classifier import ReplyClassifier, RuleBasedReplyClassifier

DEFAULT_REPLY_CLASSIFIER = "cue_model"
REPLY_CLASSIFIER_ENV = "FLYWHEEL_REPLY_CLASSIFIER"


def _cue_model() -> ReplyClassifier:
    from flywheel_pipeline.core.reply_cue_model import CueModelReplyClassifier

    return CueModelReplyClassifier()


def _llm() -> ReplyClassifier:
    from flywheel_pipeline import paths
    from flywheel_pipeline.core.reply_llm_classifier import LLMReplyClassifier, LLMSettings

    model = os.environ.get("FLYWHEEL_REPLY_LLM_MODEL")
    if not model:
        raise ValueError("the llm reply classifier needs FLYWHEEL_REPLY_LLM_MODEL (and, for a host other "
                         "than OpenAI's, FLYWHEEL_REPLY_LLM_BASE_URL; the key in FLYWHEEL_REPLY_LLM_API_KEY)")
    return LLMReplyClassifier(LLMSettings(
        model=model, base_url=os.environ.get("FLYWHEEL_REPLY_LLM_BASE_URL") or None,
        api_key=os.environ.get("FLYWHEEL_REPLY_LLM_API_KEY") or None,
        batch_size=_positive_env("FLYWHEEL_REPLY_LLM_BATCH_SIZE", 20),
        max_requests=_positive_env("FLYWHEEL_REPLY_LLM_MAX_REQUESTS", 200),
        cache_path=paths.reply_llm_cache_path()))


def _positive_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


REPLY_CLASSIFIERS: dict[str, Callable[[], ReplyClassifier]] = {
    "cue_model": _cue_model,
    "rule_based": RuleBasedReplyClassifier,
    "llm": _llm,
}


def configured_classifier_name(name: str | None = None) -> str:
    return name or os.environ.get(REPLY_CLASSIFIER_ENV) or DEFAULT_REPLY_CLASSIFIER


def make_reply_classifier(name: str | None = None) -> ReplyClassifier:
    """The classifier called ``name`` (default: the configured one); ValueError names the
    known ones."""
    chosen = configured_classifier_name(name)
    if chosen not in REPLY_CLASSIFIERS:
        raise ValueError(f"unknown reply classifier {chosen!r}; known: {', '.join(sorted(REPLY_CLASSIFIERS))}")
    return REPLY_CLASSIFIERS[chosen]()
