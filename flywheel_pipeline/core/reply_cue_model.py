"""The default offline reply classifier, ``cue_model``: a multinomial logistic regression over
the reply's own words and cues (core/reply_cues.py), trained from the shipped tuning split.

Why trained at load time rather than shipped as a model file: the tuning split is 220
replies and training takes well under a second, so the model always matches the shipped data
and code, there is no pickled artifact tied to one scikit-learn version, and the version
string (the tuning data's and the features' fingerprint plus scikit-learn's version) changes
exactly when the model can change, which re-classifies stored replies. Training is
deterministic (lbfgs on fixed data, no randomness). Scoring does not call scikit-learn: the
learnt weights are looked up per feature, so one reply costs tens of microseconds.

Order of decisions: auto-reply headers or subject (RFC 3834, as before) → auto reply;
nothing left after quoted mail, signature and HTML are removed → ``other`` with low
confidence; otherwise the model's most probable intent, its probability as confidence, the
sentiment that intent carries, and ``is_auto_reply`` when the text is an out-of-office
notice.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from flywheel_pipeline.core.reply_classifier import SENTIMENT_OF_INTENT, ReplyIntent, auto_reply_reason
from flywheel_pipeline.core.reply_cues import CUES, FEATURES_VERSION, features
from flywheel_pipeline.core.reply_text import own_text

# Inverse regularisation strength, chosen by 5-fold cross-validation on the tuning split only
# (docs/replies.md).
REGULARISATION_C = 30.0
EMPTY_CONFIDENCE = 0.2
_MAX_ITER = 2_000


@dataclass(frozen=True)
class TrainedWeights:
    classes: tuple[str, ...]
    vocabulary: Mapping[str, int]
    coef: np.ndarray        # (features, classes): one row per feature, so a reply sums rows
    intercept: np.ndarray   # (classes,)
    fingerprint: str


def _row_values(feats: Sequence[str]) -> dict[str, float]:
    """Binary features scaled to unit length (each distinct feature 1/sqrt(count))."""
    distinct = set(feats)
    scale = 1.0 / math.sqrt(len(distinct)) if distinct else 0.0
    return {f: scale for f in distinct}


def train(examples: Sequence[tuple[str, str]], *, c: float = REGULARISATION_C) -> TrainedWeights:
    """Fit on (own text, intent) pairs."""
    from scipy.sparse import csr_matrix
    from sklearn.linear_model import LogisticRegression
    import sklearn

    rows = [_row_values(features(text)) for text, _ in examples]
    vocabulary = {f: i for i, f in enumerate(sorted({f for row in rows for f in row}))}
    data, indices, indptr = [], [], [0]
    for row in rows:
        for f, value in sorted(row.items()):
            indices.append(vocabulary[f])
            data.append(value)
        indptr.append(len(indices))
    matrix = csr_matrix((data, indices, indptr), shape=(len(rows), len(vocabulary)))
    labels = [intent for _, intent in examples]
    model = LogisticRegression(C=c, max_iter=_MAX_ITER)
    model.fit(matrix, labels)
    digest = hashlib.sha256()
    for text, intent in examples:
        digest.update(f"{intent}\x1f{text}\x1e".encode())
    digest.update(f"features={FEATURES_VERSION};C={c};sklearn={sklearn.__version__}".encode())
    for name, pattern in CUES.items():
        digest.update(f"{name}={pattern.pattern}\x1e".encode())
    return TrainedWeights(tuple(str(k) for k in model.classes_), vocabulary,
                          np.ascontiguousarray(model.coef_.T), model.intercept_.copy(),
                          digest.hexdigest()[:12])


def probabilities(weights: TrainedWeights, text: str) -> np.ndarray:
    """Class probabilities for one reply's own words."""
    row = _row_values(features(text))
    idx = [weights.vocabulary[f] for f in row if f in weights.vocabulary]
    scores = weights.intercept.copy()
    if idx:
        scores += weights.coef[idx].sum(axis=0) * next(iter(row.values()))
    scores -= scores.max()
    exp = np.exp(scores)
    return exp / exp.sum()


@functools.lru_cache(maxsize=1)
def shipped_weights() -> TrainedWeights:
    """The model trained on the shipped tuning split (once per process)."""
    from flywheel_pipeline.core.reply_eval_set import shipped_set

    return train([(own_text(row.text), row.intent) for row in shipped_set("tuning")])


class CueModelReplyClassifier:
    """Offline, deterministic: quoted mail and signatures stripped, cues and words weighed by
    a linear model trained on the shipped tuning split (or on ``weights`` given)."""

    name = "cue_model"

    def __init__(self, weights: TrainedWeights | None = None) -> None:
        self.weights = weights or shipped_weights()
        self.version = f"2.{self.weights.fingerprint}"

    def classify(self, *, subject: str | None, text: str | bytes | None,
                 headers: Mapping[str, object] | None = None) -> ReplyIntent:
        reason = auto_reply_reason(headers, subject)
        if reason is not None:
            return ReplyIntent("neutral", "auto_reply", 0.99, True, reason)
        words = own_text(text)
        if not any(ch.isalnum() for ch in words):
            return ReplyIntent("neutral", "other", EMPTY_CONFIDENCE, False)
        probs = probabilities(self.weights, words)
        best = int(probs.argmax())
        intent = self.weights.classes[best]
        confidence = round(float(probs[best]), 4)
        if intent == "auto_reply":
            return ReplyIntent("neutral", intent, confidence, True, "auto-reply text")
        return ReplyIntent(SENTIMENT_OF_INTENT[intent], intent, confidence, False)
