"""Which judge may decide the offline evaluation gate: only one that ``judge_calibration`` trusts.

The configured judge decides when it is trusted (its AUC's lower bound above 0.5 for the gate's
outcome metric and the candidate's task type, with enough messages); otherwise the heuristic
scorer of the task family decides when *it* is trusted; otherwise no judge decides and the
candidate goes on to the A/B test, where outcomes decide (the rollout's harm steps protect the
champion). A judge never calibrated, or calibrated on too few messages, is not trusted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flywheel_pipeline.core.calibration import ALL_TASK_TYPES
from flywheel_pipeline.core.geval_judge import JUDGE_PREFIX as GEVAL_PREFIX
from flywheel_pipeline.core.llm_judge import EMAIL_FAMILY, family_for
from flywheel_pipeline.core.llm_judge import judge_name as llm_judge_name

OUTCOMES = "outcomes"  # no trusted judge: the A/B test on real outcomes decides


@dataclass(frozen=True)
class GateChoice:
    decided_by: str  # a judge's name, or OUTCOMES
    configured_judge: str
    trusted: bool  # the deciding judge is trusted (False exactly when OUTCOMES decide)
    reason: str


def _describe(name: str, row: Mapping | None) -> str:
    if row is None:
        return f"{name} has no calibration for this task type and metric"
    if row.get("auc") is None:
        return f"{name} has no AUC (one outcome class only, n={row['n']})"
    return (f"{name}: AUC {row['auc']:.3f} [{row['auc_low']:.3f}, {row['auc_high']:.3f}], n={row['n']}, "
            f"{'trusted' if row['trusted'] else 'not trusted' if row['gated'] else 'too few messages'}")


def calibrated_as(judge: str, task_type: str) -> str:
    """The name under which judge_calibration measures a judge of the offline evaluation: its G-Eval
    judge (``deepeval-geval:<model>``, with the e-mail family's criteria) is the message judge
    ``geval:email_writing@<model>`` for e-mail task types and ``all``; any other judge is itself (for
    another task family the G-Eval judge has no calibration of its own: not trusted)."""
    if judge.startswith(GEVAL_PREFIX) and (task_type == ALL_TASK_TYPES or family_for(task_type) == EMAIL_FAMILY):
        return llm_judge_name(EMAIL_FAMILY, judge.removeprefix(GEVAL_PREFIX))
    return judge


def choose_decider(configured: str, fallback: str | None, calibration: Mapping[str, Mapping | None],
                   metric: str, task_type: str) -> GateChoice:
    """``calibration``: judge name -> its judge_calibration row for (metric, task_type), or None."""
    scope = f"({metric}, task type {task_type})"
    said = [_describe(configured, calibration.get(configured))]
    if (calibration.get(configured) or {}).get("trusted"):
        return GateChoice(configured, configured, True, f"{said[0]} {scope}")
    if fallback and fallback != configured:
        said.append(_describe(fallback, calibration.get(fallback)))
        if (calibration.get(fallback) or {}).get("trusted"):
            return GateChoice(fallback, configured, True, f"{'; '.join(said)} {scope}: the heuristic decides")
    return GateChoice(OUTCOMES, configured, False,
                      f"{'; '.join(said)} {scope}: no trusted judge, the A/B test on outcomes decides")


def gate_passes(choice: GateChoice, win_rate: float, loss_rate: float, max_loss_margin: float) -> bool:
    """A trusted judge blocks a candidate that loses by more than the margin; without one the
    offline gate does not block (outcomes decide)."""
    if choice.decided_by == OUTCOMES:
        return True
    return loss_rate - win_rate <= max_loss_margin
