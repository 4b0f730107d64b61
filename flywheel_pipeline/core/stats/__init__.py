"""The experiment statistics engine: pure numpy/scipy, no Dagster, no I/O. Inputs are
sufficient statistics per arm (aggregation stays in SQL) and the unit of analysis is the lead.

The public API (documented in the README, "Statistics API"):
``ArmStats``, ``PolicyConfig``, ``decide(stats, weights, cfg)`` -> ``Decision``, ``welch_diff``,
``relative_lift``, ``sequential_diff``, ``regression_adjusted``, and for planning ``power``,
``minimum_detectable_lift`` and ``leads_needed``."""

from flywheel_pipeline.core.stats.cuped import AdjustedEstimate, regression_adjusted
from flywheel_pipeline.core.stats.frequentist import Estimate, relative_lift, welch_diff
from flywheel_pipeline.core.stats.policy import (CONTROL, PRIMARY, Decision, MetricResult, PolicyConfig,
                                                 decide)
from flywheel_pipeline.core.stats.planning import leads_needed, minimum_detectable_lift, power
from flywheel_pipeline.core.stats.sequential import SequentialEstimate, sequential_diff
from flywheel_pipeline.core.stats.sufficient import ArmStats

__all__ = ["AdjustedEstimate", "ArmStats", "CONTROL", "Decision", "Estimate", "MetricResult", "PRIMARY",
           "PolicyConfig", "SequentialEstimate", "decide", "leads_needed", "minimum_detectable_lift", "power",
           "regression_adjusted", "relative_lift", "sequential_diff", "welch_diff"]
