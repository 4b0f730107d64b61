"""Training assets: fine-tune through the configured backend (never paying twice), register the
model, log the cycle to MLflow, evaluate it offline against its champion.

Waiting strategy: the run waits resumably. The job is recorded before any wait; the wait
polls with backoff up to ``wait_timeout_s`` (2 h by default) and then fails with a message
saying to materialize again, which re-attaches to the same job. This keeps lineage and
metadata in the one materialization that produced the model, at the cost of a run slot
while a job trains (a sensor-polled design would free it, see README)."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from flywheel_pipeline.core.finetune.base import FineTuneError, JobRequest, TrainingFiles
from flywheel_pipeline.core.calibration import CALIBRATION_METRICS
from flywheel_pipeline.core.judge import ScorerJudge, evaluate_pairwise
from flywheel_pipeline.core.judge_gate import OUTCOMES, calibrated_as, choose_decider, gate_passes
from flywheel_pipeline.core.markdown import md_table
from flywheel_pipeline.core.models import DEFAULT_MODEL
from flywheel_pipeline.defs.datasets.assets import dpo_jsonl_export, sft_jsonl_export, training_examples
from flywheel_pipeline.defs.resources import (WAREHOUSE_POOL, ExportsResource, FineTuningResource, GenerationResource,
                                              JudgeResource, MlflowResource, WarehouseResource)
from flywheel_pipeline.tracking import log_training_cycle, run_url
from flywheel_pipeline.warehouse import model_registry as registry
from flywheel_pipeline.warehouse.finetune_jobs import job_key, submit_or_attach, wait_for_job
from flywheel_pipeline.warehouse.judge_calibration import dominant_heuristic, trust
from flywheel_pipeline.warehouse.offline_evaluations import held_out_prompts, newest_ready_model, record_evaluation

TRAINING_GROUP = "training"


class FineTuneConfig(dg.Config):
    method: str = Field("supervised", description="'supervised' (SFT export) or 'dpo' (preference export).")
    base_model: str = Field(DEFAULT_MODEL)
    hyperparameters: dict[str, float] = Field(default_factory=dict,
                                              description="e.g. n_epochs, learning_rate_multiplier, beta (DPO).")
    suffix: str | None = Field("flywheel", description="Added to the provider's model name.")
    seed: int | None = 42
    task_type: str = Field("all", description="Task family the model serves (names the MLflow model).")
    version: str | None = Field(None, description="Override the automatic semantic version.")


def _latest_metadata(context: dg.AssetExecutionContext, key: dg.AssetKey) -> dict:
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise dg.Failure(f"{key.to_user_string()} has not been materialized yet")
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@dg.asset(group_name=TRAINING_GROUP, kinds={"openai", "mlflow"}, deps=[sft_jsonl_export, dpo_jsonl_export],
          description="A fine-tuned model trained on the latest validated export, registered in model_registry "
                      "and MLflow. The job is persisted before waiting; re-execution re-attaches.")
def fine_tuned_model(context: dg.AssetExecutionContext, config: FineTuneConfig, warehouse: WarehouseResource,
                     fine_tuning: FineTuningResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    if config.method not in ("supervised", "dpo"):
        raise dg.Failure(f"method must be 'supervised' or 'dpo', got {config.method!r}")
    export_key = sft_jsonl_export.key if config.method == "supervised" else dpo_jsonl_export.key
    export = _latest_metadata(context, export_key)
    if not export.get("valid"):
        raise dg.Failure(f"the latest {export_key.to_user_string()} did not validate; fix the data first")
    fmt = "sft" if config.method == "supervised" else "dpo"
    directory = Path(export["path"])
    validation = directory / f"{fmt}.validation.jsonl"
    files = TrainingFiles(directory / f"{fmt}.train.jsonl",
                          validation if validation.exists() and validation.stat().st_size else None,
                          export["dataset_version"])
    selection = _latest_metadata(context, training_examples.key)
    organization_id = (selection.get("config") or {}).get("organization_id")
    backend = fine_tuning.client()
    sandbox = backend.name == "sandbox"
    tag = "[SANDBOX] " if sandbox else ""
    request = JobRequest(files, config.method, config.base_model, dict(config.hyperparameters), config.suffix,
                         config.seed, {"organization": organization_id or "global", "task_type": config.task_type})
    connect = warehouse.connect
    job, attached = submit_or_attach(connect, backend, request)
    context.log.info(f"{tag}{'re-attached to' if attached else 'submitted'} {backend.name} job {job.job_id} "
                     f"for dataset {files.dataset_version}")
    try:
        job = wait_for_job(connect, backend, job, poll_s=fine_tuning.poll_s, timeout_s=fine_tuning.wait_timeout_s,
                           progress=lambda j: context.log.info(f"{tag}job {j.job_id}: {j.status.value}"))
    except FineTuneError as exc:
        # the failure is recorded in finetune_jobs (status and provider error) by wait_for_job
        raise dg.Failure(str(exc), metadata={"job_id": job.job_id, "backend": backend.name,
                                             "error": str(exc)}) from exc
    model_id = backend.result(job.job_id)
    events = backend.events(job.job_id)
    curve = [(e.step, e.train_loss, e.valid_loss) for e in events if e.step is not None]
    checkpoints = backend.checkpoints(job.job_id) if hasattr(backend, "checkpoints") else []
    family = registry.family_name(organization_id, config.task_type)
    with warehouse.connect() as con:
        reg = registry.register(
            con, model_id=model_id, organization_id=organization_id, task_type=config.task_type,
            base_model=config.base_model, backend=backend.name, method=config.method, job_id=job.job_id,
            job_key=job_key(backend.name, request), dataset_version=files.dataset_version, stats=selection,
            hyperparameters=dict(config.hyperparameters), trained_tokens=job.trained_tokens,
            version_override=config.version)
        known = registry.mlflow_run_of(con, model_id)
    record = None
    if known is None:
        params = {"base_model": config.base_model, "method": config.method, "backend": backend.name,
                  "dataset_version": files.dataset_version, "min_quality_score":
                      (selection.get("config") or {}).get("min_quality_score"), **config.hyperparameters}
        metrics = {"training_examples": export["rows_per_file"].get(f"{fmt}.train.jsonl", 0),
                   "validation_examples": export["rows_per_file"].get(f"{fmt}.validation.jsonl", 0),
                   "estimated_training_tokens": export.get("estimated_training_tokens", 0),
                   "trained_tokens": job.trained_tokens or 0}
        for cp in checkpoints:  # the provider's saved checkpoints carry their own losses
            for name in ("train_loss", "valid_loss", "full_valid_loss"):
                if cp.get(name) is not None:
                    metrics[f"checkpoint_{cp['step']}_{name}"] = cp[name]
        record = log_training_cycle(tracking_uri=mlflow.tracking_uri, family=family, fine_tuned_model=model_id,
                                    version=reg.version, params=params, metrics=metrics, loss_curve=curve,
                                    export_dir=directory, dataset_version=files.dataset_version,
                                    train_file=files.train, sandbox=sandbox)
        with warehouse.connect() as con:
            registry.set_mlflow(con, model_id, record.run_id, record.registered_version)
    meta = {
        "model_id": model_id, "backend": f"{backend.name}{' (SANDBOX: nothing was trained)' if sandbox else ''}",
        "job_id": job.job_id, "reattached": attached, "family": family, "version": reg.version,
        "version_change": reg.change, "dataset_version": files.dataset_version, "method": config.method,
        "base_model": config.base_model,
        # a sandbox job trains nothing: it reports no tokens or loss (numbers only when measured,
        # so the keys keep one type across runs), and says so
        "trained": "nothing (SANDBOX backend)" if sandbox else "yes",
    }
    if not sandbox and job.trained_tokens is not None:
        meta["trained_tokens"] = int(job.trained_tokens)
    if not sandbox and curve and curve[-1][1] is not None:
        meta["final_train_loss"] = float(curve[-1][1])
    if checkpoints:
        meta["checkpoints"] = dg.MetadataValue.md(md_table(
            ["step", "train loss", "valid loss", "checkpoint model"],
            [(c["step"], c.get("train_loss"), c.get("valid_loss"), c.get("model")) for c in checkpoints]))
    if record is not None:
        meta["mlflow_run"] = dg.MetadataValue.url(run_url(mlflow.tracking_uri, record.experiment_id,
                                                          record.run_id, mlflow.ui_url))
        meta["mlflow_registered_version"] = f"{record.registered_name} v{record.registered_version}"
        meta["mlflow_aliases"] = ", ".join(record.aliases)
    return dg.MaterializeResult(metadata=meta)


@dg.asset(group_name=TRAINING_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"}, deps=[fine_tuned_model],
          description="Every model with version, status, traffic, lineage to its dataset, training stats and "
                      "outcome metrics (filled by the experiments).")
def model_registry(warehouse: WarehouseResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        rows, statuses = registry.overview(con)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(len(rows)),
        "by_status": dg.MetadataValue.json(statuses),
        "models": dg.MetadataValue.md(md_table(registry.OVERVIEW_COLUMNS, rows))})


class OfflineEvaluationConfig(dg.Config):
    baseline_model: str = Field(DEFAULT_MODEL, description="The champion when the family has no deployed model yet.")
    max_prompts: int = Field(200, description="Held-out prompts (validation split) to answer.")
    max_loss_margin: float = Field(0.05, description="Block deployment when loss rate - win rate exceeds this.")
    trust_metric: str = Field("reply", description="The outcome (judge_calibration metric: reply, positive_reply, "
                                                   "meeting) a judge must be trusted on to decide the gate.")
    seed: int = 7


@dg.asset(group_name=TRAINING_GROUP, kinds={"python"}, deps=[model_registry, training_examples],
          description="The newest ready model and the champion answer the same held-out prompts; a judge "
                      "compares each pair in random order (ties allowed, identical answers skipped). Only a judge "
                      "judge_calibration trusts decides the gate (else the task family's heuristic if trusted, "
                      "else the A/B test on outcomes); gate_passed and decided_by say which.")
def offline_evaluation(context: dg.AssetExecutionContext, config: OfflineEvaluationConfig,
                       warehouse: WarehouseResource, generation: GenerationResource,
                       exports: ExportsResource, judge: JudgeResource) -> dg.MaterializeResult:
    if config.trust_metric not in CALIBRATION_METRICS:
        raise dg.Failure(f"trust_metric {config.trust_metric!r} is not one of {sorted(CALIBRATION_METRICS)}")
    configured = judge.judge()
    with warehouse.connect() as con:
        candidate = newest_ready_model(con)
        if candidate is None:
            raise dg.Failure("no ready model to evaluate; materialize fine_tuned_model first")
        champion = registry.champion(con, candidate.family) or config.baseline_model
        prompts = held_out_prompts(con, config.max_prompts)
        fallback = dominant_heuristic(con, candidate.task_type)
        measured_as = calibrated_as(configured.name, candidate.task_type)
        calibration = trust(con, [measured_as, fallback or ""], config.trust_metric, candidate.task_type)
    if not prompts:
        raise dg.Failure("no held-out prompts: the training examples have no validation split")
    # only a judge judge_calibration trusts decides; else the task family's heuristic if trusted; else outcomes
    choice = choose_decider(measured_as, fallback, calibration, config.trust_metric, candidate.task_type)
    pairwise = configured
    if choice.decided_by == fallback and fallback != measured_as:
        pairwise = ScorerJudge(fallback.split(":", 1)[1])
    generator = generation.client()
    sandbox = generator.name == "sandbox"
    if sandbox:  # the sandbox's stand-in "fine-tuned" model answers with texts of its training file
        fmt = "sft" if candidate.method == "supervised" else "dpo"
        train = Path(exports.path) / candidate.dataset_version / f"{fmt}.train.jsonl"
        if train.exists():
            generator.remember(candidate.model_id, train)
    result = evaluate_pairwise(generator.generate, pairwise, candidate.model_id, champion, prompts, config.seed)
    passed = gate_passes(choice, result.win_rate, result.loss_rate, config.max_loss_margin)
    with warehouse.connect() as con:
        record_evaluation(con, run_id=context.run.run_id, candidate=candidate.model_id, champion=champion,
                          judge=pairwise.name, generator=generator.name, prompts=result.prompts, tally=result.tally,
                          win_rate=result.win_rate, loss_rate=result.loss_rate, decided_by=choice.decided_by,
                          judge_trusted=choice.trusted, gate_passed=passed, gate_reason=choice.reason)
    context.log.info(f"{'[SANDBOX generator] ' if sandbox else ''}{candidate.model_id} vs {champion}: {result.tally}")
    if choice.decided_by == OUTCOMES:
        context.log.warning(f"offline gate: {choice.reason}; the tally of {pairwise.name} is recorded, not used")
    return dg.MaterializeResult(metadata={
        "candidate": candidate.model_id, "champion": champion, "family": candidate.family, "judge": pairwise.name,
        "configured_judge": configured.name, "decided_by": choice.decided_by, "judge_trusted": choice.trusted,
        "gate_passed": passed, "gate_reason": choice.reason, "trust_metric": config.trust_metric,
        "task_type": candidate.task_type,
        "generator": f"{generator.name}{SANDBOX_GENERATOR_NOTE if sandbox else ''}",
        "prompts": result.prompts, "wins": result.tally["candidate"], "losses": result.tally["champion"],
        "ties": result.tally["tie"], "skipped_identical": result.tally["skipped"],
        "win_rate": round(result.win_rate, 4), "loss_rate": round(result.loss_rate, 4),
        "max_loss_margin": config.max_loss_margin,
        "mean_candidate_score": result.mean_candidate_score, "mean_champion_score": result.mean_champion_score,
        "samples": dg.MetadataValue.md(md_table(["prompt", "winner", "candidate", "champion"], result.samples))})


# Why a sandbox evaluation reads like 200-0: the stand-in candidate answers with the best messages
# of its own training data while the stand-in champion answers with a fixed template.
SANDBOX_GENERATOR_NOTE = (" (SANDBOX stand-in answers: the candidate replays texts from its training file, the "
                          "champion a fixed template, so a lopsided result says nothing about real models)")
