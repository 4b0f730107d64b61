"""How well a reply classifier agrees with gold labels: precision and recall per intent and
for positive replies (sentiment ``positive``, what ``positive_reply`` counts), each with a
95% Wilson interval, plus accuracy and throughput. Pure: takes rows and a classifier.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from flywheel_pipeline.core.reply_classifier import INTENTS, ReplyClassifier, ReplyIntent
from flywheel_pipeline.core.reply_eval_set import LabelledReply
from flywheel_pipeline.core.stats.frequentist import wilson_interval


@dataclass(frozen=True)
class Rate:
    """successes / n with its 95% Wilson interval (n = 0: undefined, shown as '-')."""
    successes: int
    n: int

    @property
    def value(self) -> float | None:
        return self.successes / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.n)

    def __str__(self) -> str:
        if not self.n:
            return "-"
        low, high = self.interval
        return f"{self.value:.3f} [{low:.3f}, {high:.3f}] ({self.successes}/{self.n})"


@dataclass(frozen=True)
class ClassMetrics:
    label: str
    support: int          # gold rows of this class
    predicted: int        # rows predicted as this class
    true_positives: int

    @property
    def precision(self) -> Rate:
        return Rate(self.true_positives, self.predicted)

    @property
    def recall(self) -> Rate:
        return Rate(self.true_positives, self.support)


@dataclass
class Evaluation:
    classifier: str
    rows: int
    seconds: float
    positive: ClassMetrics
    intents: list[ClassMetrics]
    intent_accuracy: Rate
    sentiment_accuracy: Rate
    confusions: Counter = field(default_factory=Counter)   # (gold intent, predicted intent) -> count
    errors: list[tuple[LabelledReply, ReplyIntent]] = field(default_factory=list)

    @property
    def replies_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def _class_metrics(label: str, gold: Sequence[bool], predicted: Sequence[bool]) -> ClassMetrics:
    return ClassMetrics(label, sum(gold), sum(predicted), sum(g and p for g, p in zip(gold, predicted)))


def evaluate(classifier: ReplyClassifier, rows: Sequence[LabelledReply]) -> Evaluation:
    """Classify every row (timed) and compare with its gold intent and sentiment."""
    started = time.perf_counter()
    batch = getattr(classifier, "classify_batch", None)  # the llm classifier asks in batches
    if batch is not None:
        predictions = list(batch([(row.subject, row.text, row.headers) for row in rows]))
    else:
        predictions = [classifier.classify(subject=row.subject, text=row.text, headers=row.headers) for row in rows]
    seconds = time.perf_counter() - started
    labels = [intent for intent in INTENTS
              if any(r.intent == intent for r in rows) or any(p.intent == intent for p in predictions)]
    intents = [_class_metrics(intent, [r.intent == intent for r in rows], [p.intent == intent for p in predictions])
               for intent in labels]
    positive = _class_metrics("positive", [r.sentiment == "positive" for r in rows],
                              [p.sentiment == "positive" for p in predictions])
    confusions = Counter((r.intent, p.intent) for r, p in zip(rows, predictions) if r.intent != p.intent)
    errors = [(r, p) for r, p in zip(rows, predictions) if r.intent != p.intent or r.sentiment != p.sentiment]
    return Evaluation(
        classifier=f"{classifier.name}:{classifier.version}", rows=len(rows), seconds=seconds,
        positive=positive, intents=intents,
        intent_accuracy=Rate(sum(r.intent == p.intent for r, p in zip(rows, predictions)), len(rows)),
        sentiment_accuracy=Rate(sum(r.sentiment == p.sentiment for r, p in zip(rows, predictions)), len(rows)),
        confusions=confusions, errors=errors)


def format_evaluation(result: Evaluation, *, title: str = "") -> str:
    """The report ``flywheel replies eval`` and the benchmark print."""
    lines = [f"classifier {result.classifier}" + (f" on {title}" if title else "") + f": {result.rows} replies"]
    lines.append(f"positive precision {result.positive.precision}")
    lines.append(f"positive recall    {result.positive.recall}")
    lines.append(f"intent accuracy    {result.intent_accuracy}")
    lines.append(f"sentiment accuracy {result.sentiment_accuracy}")
    lines.append("")
    lines.append(f"{'intent':<20} {'gold':>5} {'pred':>5}  {'precision [95% CI]':<36} {'recall [95% CI]':<36}")
    for m in result.intents:
        lines.append(f"{m.label:<20} {m.support:>5} {m.predicted:>5}  {str(m.precision):<36} {str(m.recall):<36}")
    if result.confusions:
        lines.append("")
        lines.append("most frequent confusions (gold -> predicted): " + ", ".join(
            f"{g} -> {p} {n}" for (g, p), n in result.confusions.most_common(8)))
    return "\n".join(lines)
