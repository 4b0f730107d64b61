"""How well a judge's score predicts real outcomes: AUC with DeLong intervals, Spearman, trust.

Pure: it works from per-(judge, task type, metric) sufficient statistics that
``warehouse/judge_calibration.py`` computes in SQL from the counts of positives and negatives
at each distinct score (no per-message data reaches Python):

* ``positives`` (n1), ``negatives`` (n0);
* DeLong's placement values (DeLong, DeLong & Clarke-Pearson 1988; the rank form of Sun & Xu
  2014): for a positive with score s, V10 = (negatives below s + half the negatives tied at s) / n0;
  for a negative, V01 = (positives above s + half the positives tied) / n1. AUC = mean V10 =
  mean V01 (the Mann–Whitney statistic, ties counted one half), and
  Var(AUC) = S10 / n1 + S01 / n0 with S10, S01 the sample variances of the placements. The SQL
  gives their sums and sums of squares;
* ``spearman``: Spearman's rho between the score and the labels' quality score (the Pearson
  correlation of the average ranks, as scipy.stats.spearmanr), with its p-value from the t
  distribution (scipy's).

**Trust.** A row is *trusted* when its sample passes the gate (``min_messages`` messages and at
least ``min_events`` positives and ``min_events`` negatives) and the lower bound of the AUC's
interval is above 0.5. The intervals are simultaneous over every row that passes the gate
(Bonferroni: each at level 1 - alpha / m), so on a world where no judge predicts anything the
chance that *any* row of a run is trusted is at most alpha / 2 (one-sided), not alpha per row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from scipy.stats import norm
from scipy.stats import t as student_t

# the outcome metrics a judge is calibrated against -> the labels' flag
CALIBRATION_METRICS: dict[str, str] = {"reply": "replied", "positive_reply": "positive_reply",
                                       "meeting": "meeting_booked"}
ALL_TASK_TYPES = "all"
HUMAN_JUDGE = "human"  # people's 1-5 ratings (feedback), averaged per message
HUMAN_CRITERIA = "rating-1-5"
DECILES = 10


@dataclass(frozen=True)
class CalibrationConfig:
    alpha: float = 0.05  # family-wise level of the run's simultaneous AUC intervals
    min_messages: int = 200  # a row with fewer mature, judged messages is reported, never trusted
    min_events: int = 20  # ... or with fewer positives (or fewer negatives) than this

    @property
    def level(self) -> float:
        return 1 - self.alpha


@dataclass(frozen=True)
class AucStats:
    """Sufficient statistics of one (judge, criteria version, task type, metric)."""
    judge: str
    criteria_version: str
    task_type: str
    metric: str
    n: int
    positives: int
    sum_v10: float
    sumsq_v10: float
    sum_v01: float
    sumsq_v01: float
    quality_n: int = 0
    spearman: float | None = None


@dataclass
class Calibration:
    judge: str
    criteria_version: str
    task_type: str
    metric: str
    n: int
    positives: int
    rate: float | None
    auc: float | None
    auc_se: float | None
    auc_low: float | None
    auc_high: float | None
    interval_level: float | None
    spearman: float | None
    spearman_p: float | None
    quality_n: int
    gated: bool  # enough messages and events to be judged at all
    trusted: bool

    def row(self) -> dict:
        return asdict(self)


def delong(stats: AucStats) -> tuple[float, float] | tuple[None, None]:
    """AUC and its DeLong standard error from the placement sums (None without both classes)."""
    n1, n0 = stats.positives, stats.n - stats.positives
    if n1 == 0 or n0 == 0:
        return None, None
    auc = stats.sum_v10 / n1

    def sample_var(total: float, squares: float, k: int) -> float:
        return max(0.0, (squares - total * total / k) / (k - 1)) if k > 1 else 0.0

    variance = sample_var(stats.sum_v10, stats.sumsq_v10, n1) / n1 + sample_var(stats.sum_v01, stats.sumsq_v01, n0) / n0
    return auc, math.sqrt(variance)


def spearman_p_value(rho: float | None, n: int) -> float | None:
    """Two-sided p-value of Spearman's rho (t distribution with n - 2 df, as scipy.stats.spearmanr)."""
    if rho is None or n < 3 or math.isnan(rho):
        return None
    if abs(rho) >= 1:
        return 0.0
    t = rho * math.sqrt((n - 2) / (1 - rho * rho))
    return float(2 * student_t.sf(abs(t), n - 2))


def passes_gate(stats: AucStats, config: CalibrationConfig) -> bool:
    negatives = stats.n - stats.positives
    return stats.n >= config.min_messages and stats.positives >= config.min_events and negatives >= config.min_events


def calibrate(rows: Sequence[AucStats], config: CalibrationConfig = CalibrationConfig()) -> list[Calibration]:
    """Every row's AUC, its simultaneous interval (Bonferroni over the rows that pass the sample
    gate), Spearman and ``trusted``."""
    m = max(1, sum(1 for s in rows if passes_gate(s, config)))
    level = 1 - config.alpha / m
    z = float(norm.ppf(1 - config.alpha / (2 * m)))
    out = []
    for s in rows:
        auc, se = delong(s)
        gated = passes_gate(s, config)
        low = high = None
        if auc is not None:
            low, high = max(0.0, auc - z * se), min(1.0, auc + z * se)
        spearman = None if s.spearman is None or math.isnan(s.spearman) else float(s.spearman)
        out.append(Calibration(
            s.judge, s.criteria_version, s.task_type, s.metric, s.n, s.positives,
            s.positives / s.n if s.n else None, auc, se, low, high, level if auc is not None else None,
            spearman, spearman_p_value(spearman, s.quality_n), s.quality_n, gated,
            trusted=bool(gated and low is not None and low > 0.5)))
    return out


def interval_label(config: CalibrationConfig, rows: int) -> str:
    """How the tables name the interval: derived from the configured level, never hard-coded."""
    return f"simultaneous {config.level:.0%} CI (Bonferroni over {rows} rows)"
