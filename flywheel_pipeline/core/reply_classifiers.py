"""The reply classifiers by name, and which one the pipeline uses.

``cue_model`` (default): offline, quoted mail and signatures stripped, words and cues weighed
by a linear model trained on the shipped tuning split (core/reply_cue_model.py).
``rule_based``: the first offline classifier, first matching regex wins (kept for comparison).

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


REPLY_CLASSIFIERS: dict[str, Callable[[], ReplyClassifier]] = {
    "cue_model": _cue_model,
    "rule_based": RuleBasedReplyClassifier,
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
