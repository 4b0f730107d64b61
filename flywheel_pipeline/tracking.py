"""MLflow: one run per training cycle, the fine-tuned model as an MLflow 3 external model,
registered as a version of the family's registered model with ``champion``/``challenger``
aliases kept in step with the model registry table.

Default tracking URI: ``sqlite:///$FLYWHEEL_HOME/mlflow.db`` (``MLFLOW_TRACKING_URI`` wins);
artifacts under ``$FLYWHEEL_HOME/mlartifacts``. Open the UI with
``mlflow ui --backend-store-uri sqlite:///.flywheel/mlflow.db``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flywheel_pipeline import paths

EXPERIMENT = "outcome-flywheel"


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.mlflow_db_path()}"


@dataclass(frozen=True)
class TrainingRunRecord:
    run_id: str
    experiment_id: str
    logged_model_id: str
    registered_name: str
    registered_version: str
    aliases: tuple[str, ...]


def ensure_experiment(tracking_uri: str) -> str:
    """The flywheel's experiment id, created with its artifacts beside a sqlite store
    ($FLYWHEEL_HOME/mlartifacts) rather than in the working directory."""
    from mlflow import MlflowClient

    return _experiment(MlflowClient(tracking_uri=tracking_uri), tracking_uri)


# The MLflow UI opens an experiment of this kind on its runs (training cycles, leaderboards),
# not on the GenAI traces page, which the flywheel does not fill.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _experiment(client, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        if experiment.tags.get("mlflow.experimentKind") is None:
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    artifacts = None
    if tracking_uri.startswith("sqlite:///"):
        artifacts = (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").absolute().as_uri()
    return client.create_experiment(EXPERIMENT, artifact_location=artifacts, tags=EXPERIMENT_KIND)


def log_training_cycle(*, tracking_uri: str, family: str, fine_tuned_model: str, version: str,
                       params: dict[str, Any], metrics: dict[str, float],
                       loss_curve: list[tuple[int, float | None, float | None]], export_dir: Path,
                       dataset_version: str, train_file: Path, sandbox: bool,
                       champion_if_none: bool = False) -> TrainingRunRecord:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment(client, tracking_uri)
    tags = {"flywheel.family": family, "flywheel.version": version, "flywheel.fine_tuned_model": fine_tuned_model,
            "flywheel.dataset_version": dataset_version, "flywheel.sandbox": str(sandbox).lower()}
    if sandbox:  # no training metric is logged for a job that trained nothing: a 0 would read as a result
        tags["flywheel.trained"] = "nothing: SANDBOX backend (no tokens trained, no loss)"
        metrics = {k: v for k, v in metrics.items() if k != "trained_tokens"}
        loss_curve = []
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{family} v{version}", tags=tags) as run:
        mlflow.log_params({k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        for step, train_loss, valid_loss in loss_curve:
            if train_loss is not None:
                mlflow.log_metric("train_loss", float(train_loss), step=int(step))
            if valid_loss is not None:
                mlflow.log_metric("valid_loss", float(valid_loss), step=int(step))
        mlflow.log_artifacts(str(export_dir), artifact_path="export")
        with warnings.catch_warnings():  # a local path matches two equivalent local-artifact sources
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(train_file))
        dataset = MetaDataset(source, name=f"{family}-{dataset_version}", digest=dataset_version)
        mlflow.log_input(dataset, context="training")
        model = mlflow.create_external_model(name=family, source_run_id=run.info.run_id,
                                             params={"fine_tuned_model": fine_tuned_model, "version": version},
                                             tags=tags, model_type="fine-tuned-llm",
                                             experiment_id=experiment_id)
    registered = mlflow.register_model(f"models:/{model.model_id}", family, tags=tags)
    aliases = ["challenger"]
    client.set_registered_model_alias(family, "challenger", registered.version)
    try:
        client.get_model_version_by_alias(family, "champion")
    except Exception:  # noqa: BLE001 - no champion yet: the first model of a family serves
        if champion_if_none:
            client.set_registered_model_alias(family, "champion", registered.version)
            aliases.append("champion")
    return TrainingRunRecord(run.info.run_id, experiment_id, model.model_id, family, str(registered.version),
                             tuple(aliases))


def run_url(tracking_uri: str, experiment_id: str, run_id: str, ui_base: str = "http://127.0.0.1:5000") -> str:
    return f"{ui_base}/#/experiments/{experiment_id}/runs/{run_id}"


def sync_aliases(tracking_uri: str, family: str, champion_version: str | None,
                 challenger_version: str | None) -> None:
    """Point the ``champion`` and ``challenger`` aliases of a registered model at the given
    versions (``None`` removes the alias), keeping MLflow in step with the registry table."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    for alias, version in (("champion", champion_version), ("challenger", challenger_version)):
        if version is not None:
            client.set_registered_model_alias(family, alias, version)
        else:
            try:
                client.delete_registered_model_alias(family, alias)
            except MlflowException:
                pass  # the alias was not set


@dataclass(frozen=True)
class LeaderboardRun:
    run_id: str
    experiment_id: str


def log_leaderboard(tracking_uri: str, entries: list[dict], table: str) -> LeaderboardRun:
    """One run per leaderboard: each model's weighted score and rates as metrics (named by model
    id, in MLflow's allowed characters) and the table as ``leaderboard.md``."""
    import re

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name="leaderboard",
                          tags={"flywheel.kind": "leaderboard"}) as run:
        for b in entries:
            key = re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", b["model"])[:200]
            mlflow.log_metrics({f"{key}/weighted_score": b["score"], f"{key}/reply_rate": b["reply"],
                                f"{key}/meeting_rate": b["meeting"], f"{key}/close_rate": b["close"],
                                f"{key}/leads": b["leads"]})
        mlflow.log_text(table, "leaderboard.md")
        return LeaderboardRun(run.info.run_id, experiment_id)



def log_table(tracking_uri: str, name: str, rows: list[dict], markdown: str | None = None,
              metrics: dict[str, float] | None = None, figures: dict[str, Any] | None = None,
              tables: dict[str, list[dict]] | None = None) -> LeaderboardRun:
    """One run per materialization of a derived table (``flywheel.kind`` = ``name``): the rows as
    the artifact ``<name>.json`` (decimals as exact strings), its Markdown as ``<name>.md``, any
    headline ``metrics``, further ``tables`` as ``<key>.json`` and matplotlib ``figures`` as
    ``<key>.png``."""
    import json
    import math
    from decimal import Decimal

    import mlflow

    def plain(value: Any) -> Any:
        if isinstance(value, Decimal):
            return str(value)
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value

    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags={"flywheel.kind": name}) as run:
        if metrics:
            mlflow.log_metrics(metrics)
        mlflow.log_text(json.dumps([{k: plain(v) for k, v in r.items()} for r in rows], indent=1, default=str),
                        f"{name}.json")
        if markdown is not None:
            mlflow.log_text(markdown, f"{name}.md")
        for key, extra in (tables or {}).items():
            mlflow.log_text(json.dumps([{k: plain(v) for k, v in r.items()} for r in extra], indent=1,
                                       default=str), f"{key}.json")
        for key, figure in (figures or {}).items():
            mlflow.log_figure(figure, f"{key}.png")
        return LeaderboardRun(run.info.run_id, experiment_id)
