"""Bayesian view (Gaussian approximation), sample-ratio mismatch, multiple testing, power."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

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
    chance = float(stats.norm.cdf(z))
    loss = float(sd * stats.norm.pdf(z) - mean * stats.norm.cdf(-z))  # E[max(0, -D)]
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


def cohens_h(p1: float, p2: float) -> float:
    return 2 * math.asin(math.sqrt(p2)) - 2 * math.asin(math.sqrt(p1))


def leads_per_arm(baseline: float, lift: float, *, alpha: float = 0.05, power: float = 0.8,
                  relative: bool = True) -> int:
    """Leads per arm to detect ``lift`` on a rate (two-sided, equal arms; arcsine/Cohen's h
    normal approximation, as statsmodels' NormalIndPower)."""
    target = baseline * (1 + lift) if relative else baseline + lift
    if not 0 < baseline < 1 or not 0 < target < 1:
        raise ValueError("rates must be in (0, 1)")
    h = abs(cohens_h(baseline, target))
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return math.ceil((z / h) ** 2 * 2)  # n per arm for two equal independent samples


def minimum_detectable_effect(baseline: float, n_per_arm: int, *, alpha: float = 0.05,
                              power: float = 0.8) -> float:
    """Smallest absolute rate difference detectable with ``n_per_arm`` leads in each arm."""
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    h = z * math.sqrt(2 / n_per_arm)
    target = math.sin(math.asin(math.sqrt(baseline)) + h / 2) ** 2
    return target - baseline
