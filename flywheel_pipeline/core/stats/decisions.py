"""Bayesian view (Gaussian approximation), sample-ratio mismatch, multiple testing."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from flywheel_pipeline.core.stats.sufficient import ArmStats


@dataclass(frozen=True)
class BayesResult:
    chance_to_win: float
    expected_loss: float  # expected shortfall of choosing the treatment, in metric units
    posterior_mean: float
    posterior_sd: float


def gaussian_bayes(treatment: ArmStats, control: ArmStats, *, prior_mean: float = 0.0,
                   prior_sd: float | None = None) -> BayesResult:
    """Posterior of the difference under a normal likelihood (and an optional proper normal
    prior on it); chance the treatment is better and the expected loss of shipping it."""
    diff = treatment.mean - control.mean
    var = treatment.var / treatment.n + control.var / control.n
    if prior_sd is not None:
        if prior_sd <= 0:
            raise ValueError("prior_sd must be positive")
        precision = 1 / var + 1 / prior_sd ** 2 if var > 0 else math.inf
        mean = (diff / var + prior_mean / prior_sd ** 2) / precision if var > 0 else diff
        var = 1 / precision if var > 0 else 0.0
    else:
        mean = diff
    sd = math.sqrt(var)
    if sd == 0:
        return BayesResult(float(mean > 0), max(0.0, -mean), mean, 0.0)
    z = mean / sd
    chance = float(special.ndtr(z))
    pdf = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    loss = float(sd * pdf - mean * special.ndtr(-z))  # E[max(0, -D)]
    return BayesResult(chance, loss, mean, sd)


@dataclass(frozen=True)
class SrmResult:
    chi2: float
    p_value: float
    mismatch: bool


def sample_ratio_mismatch(counts: list[int], weights: list[float], threshold: float = 0.001) -> SrmResult:
    """Chi-square goodness of fit of the observed units per arm against the configured weights."""
    observed = np.asarray(counts, dtype=float)
    w = np.asarray(weights, dtype=float)
    if observed.sum() == 0:
        return SrmResult(0.0, 1.0, False)
    expected = observed.sum() * w / w.sum()
    result = stats.chisquare(observed, expected)
    return SrmResult(float(result.statistic), float(result.pvalue), bool(result.pvalue < threshold))


def holm(p_values: list[float], alpha: float = 0.05) -> tuple[list[bool], list[float]]:
    """Holm's step-down family-wise error control: (rejections, adjusted p-values)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return [a <= alpha for a in adjusted], adjusted


def benjamini_hochberg(p_values: list[float], alpha: float = 0.05) -> tuple[list[bool], list[float]]:
    """Benjamini-Hochberg false-discovery-rate control: (rejections, adjusted p-values)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i], reverse=True)
    adjusted = [0.0] * m
    running = 1.0
    for k, i in enumerate(order):
        rank = m - k
        running = min(running, p_values[i] * m / rank)
        adjusted[i] = min(1.0, running)
    return [a <= alpha for a in adjusted], adjusted


def weighted_holm(p_values: list[float], weights: list[float], alpha: float = 0.05) -> list[bool]:
    """Holm's weighted step-down procedure (Holm 1979): hypothesis i gets the share
    ``weights[i]`` of alpha; in order of p / weight, reject while p <= alpha * weight / (sum of
    the weights not yet rejected). Controls the family-wise error at alpha for any dependence;
    with equal weights it is Holm's procedure."""
    if len(p_values) != len(weights) or any(w <= 0 for w in weights):
        raise ValueError("one positive weight per p-value")
    rejected = [False] * len(p_values)
    remaining = sum(weights)
    for i in sorted(range(len(p_values)), key=lambda i: p_values[i] / weights[i]):
        if p_values[i] > alpha * weights[i] / remaining:
            break
        rejected[i] = True
        remaining -= weights[i]
    return rejected
