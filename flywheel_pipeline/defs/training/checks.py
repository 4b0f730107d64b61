"""Training checks: one champion per family; a candidate that loses offline is not deployed."""

import dagster as dg

from flywheel_pipeline.defs.resources import WarehouseResource
from flywheel_pipeline.defs.training.assets import model_registry, offline_evaluation
from flywheel_pipeline.warehouse import model_registry as registry


@dg.asset_check(asset=model_registry, description="At most one deployed (champion) model per family.")
def one_champion_per_family(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect() as con:
        several = registry.families_with_several_champions(con)
    return dg.AssetCheckResult(passed=not several, metadata={
        "families_with_several_champions": dg.MetadataValue.json([list(r) for r in several])})


@dg.asset_check(asset=offline_evaluation, blocking=True,
                description="Blocks deployment when the candidate loses to the champion by more than the margin, by a "
                            "judge judge_calibration trusts (without one, the A/B test decides).")
def candidate_not_worse_than_champion(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    event = context.instance.get_latest_materialization_event(offline_evaluation.key)
    if event is None or event.asset_materialization is None:
        return dg.AssetCheckResult(passed=False, metadata={"reason": "no evaluation yet"})
    m = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    gap = m["loss_rate"] - m["win_rate"]
    # only a trusted judge decides (core/judge_gate.py); an evaluation from before the gate: the tally
    return dg.AssetCheckResult(passed=m.get("gate_passed", gap <= m["max_loss_margin"]), metadata={
        "candidate": m["candidate"], "champion": m["champion"], "win_rate": m["win_rate"],
        "loss_rate": m["loss_rate"], "loss_minus_win": round(gap, 4), "max_loss_margin": m["max_loss_margin"],
        "decided_by": m.get("decided_by", m.get("judge")), "gate_reason": m.get("gate_reason", "")})
