"""Dataset assets: the redacted text pool, training examples, preference pairs and the
validated fine-tuning exports (SFT and DPO)."""

import json
from pathlib import Path

import dagster as dg
from pydantic import Field

from flywheel_pipeline.core.finetune_format import validate_file
from flywheel_pipeline.core.markdown import md_bar_chart, md_table
from flywheel_pipeline.core.models import DEFAULT_MODEL
from flywheel_pipeline.defs.outcomes.assets import outcome_labels
from flywheel_pipeline.defs.resources import WAREHOUSE_POOL, ExportsResource, WarehouseResource
from flywheel_pipeline.warehouse import dataset_summary
from flywheel_pipeline.warehouse.datasets import (PairConfig, SelectionConfig, build_preference_pairs,
                                                  build_training_examples, export_jsonl, pair_provenance,
                                                  redact_new_messages)

DATASETS_GROUP = "datasets"


@dg.asset(group_name=DATASETS_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb", "python"}, deps=[outcome_labels],
          description="PII-redacted prompt and message text of every mature, delivered message "
                      "(incremental: each message is redacted once).")
def redacted_messages(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        result = redact_new_messages(con, progress=context.log.info)
        total = dataset_summary.redacted_count(con)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(total), "redacted_now": result.redacted,
        "pii_replaced_now": dg.MetadataValue.json(dict(result.found))})


class TrainingExamplesConfig(dg.Config):
    min_quality_score: float = Field(0.6, description="Positives have at least this quality_score.")
    include_negative_examples: bool = Field(False, description="Also select negatives (for KTO).")
    max_negative_score: float = Field(0.2, description="Negatives have at most this quality_score.")
    organization_id: str | None = Field(None, description="One organization, or None for a global dataset.")
    limit: int | None = Field(None, description="At most this many examples (best scores first).")
    validation_fraction: float = Field(0.1, description="Share of leads held out; 0 turns the split off.")
    max_per_task_framework: int | None = Field(
        None, description="Balance cap: at most this many examples per (task_type, framework).")


@dg.asset(group_name=DATASETS_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"}, deps=[redacted_messages],
          description="Selected training examples: mature labels over the quality threshold (and optional "
                      "negatives), near-duplicates collapsed, balance caps, split by lead hash.")
def training_examples(context: dg.AssetExecutionContext, config: TrainingExamplesConfig,
                      warehouse: WarehouseResource) -> dg.MaterializeResult:
    cfg = SelectionConfig(**config.model_dump())
    with warehouse.connect() as con:
        try:
            stats = build_training_examples(con, cfg)
        except ValueError as exc:
            raise dg.Failure(str(exc)) from exc
        scores = dataset_summary.example_score_distribution(con)
        by_task = dataset_summary.examples_by_task(con)
    context.log.info(f"training examples: {stats}")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(stats["examples"]), **stats,
        "config": dg.MetadataValue.json(config.model_dump()),
        "score_distribution": dg.MetadataValue.md(md_bar_chart(scores)),
        "by_task_and_framework": dg.MetadataValue.md(md_table(
            ["task_type", "framework", "positives", "negatives"], by_task))})


class PreferencePairsConfig(dg.Config):
    min_margin: float = Field(0.3, description="Preferred score minus non-preferred score, at least.")
    organization_id: str | None = None
    validation_fraction: float = 0.1
    limit: int | None = None
    include_council_pairs: bool = Field(
        False, description="Also include the AI council's preference pairs (table council_pairs, POST /council) whose "
                           "judge judge_calibration trusted. Off by default: they train paid models on a judge's "
                           "opinion, not on outcomes.")


@dg.asset(group_name=DATASETS_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"}, deps=[redacted_messages],
          description="DPO pairs: for one context (organization, task type, lead industry and role), a "
                      "message with a clearly better outcome than another; both ids and scores recorded.")
def preference_pairs(context: dg.AssetExecutionContext, config: PreferencePairsConfig,
                     warehouse: WarehouseResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        try:
            stats = build_preference_pairs(con, PairConfig(**config.model_dump()))
        except ValueError as exc:
            raise dg.Failure(str(exc)) from exc
        margins = dataset_summary.pair_margin_distribution(con)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(stats["pairs"]),
        **{k: dg.MetadataValue.json(v) if isinstance(v, dict) else v for k, v in stats.items()},
        "margin_distribution": dg.MetadataValue.md(md_bar_chart(margins))})


class ExportConfig(dg.Config):
    model: str = Field(DEFAULT_MODEL, description="Target model: token encoding, limit and price.")
    epochs: int | None = Field(None, description="Epochs for the estimate (default: OpenAI's heuristic).")
    price_per_million: float | None = Field(None, description="USD per 1M training tokens (default: list price).")
    include_trl: bool = Field(False, description="Also write TRL formats (KTO with SFT, prompt/chosen/rejected "
                                                 "with DPO) for local training.")


def _export(context: dg.AssetExecutionContext, config: ExportConfig, warehouse: WarehouseResource,
            exports: ExportsResource, fmt: str, trl: str) -> dg.MaterializeResult:
    formats = [fmt] + ([trl] if config.include_trl else [])
    with warehouse.connect() as con:
        provenance = pair_provenance(con) if fmt == "dpo" else None
        result = export_jsonl(con, Path(exports.path), formats, provenance)
        distribution = (dataset_summary.example_score_distribution(con, positives_only=True) if fmt == "sft"
                        else dataset_summary.pair_score_distribution(con))
    reports = {}
    for split in ("train", "validation"):
        path = result.files[f"{fmt}.{split}.jsonl"]
        if result.rows[path.name]:
            reports[split] = validate_file(path, kind="chat" if fmt == "sft" else "preference", model=config.model,
                                           epochs=config.epochs, price_per_million=config.price_per_million)
    train = reports["train"].as_dict() if "train" in reports else {}
    (result.directory / f"{fmt}.validation_report.json").write_text(
        json.dumps({k: v.as_dict() for k, v in reports.items()}, indent=2))
    context.log.info(f"{fmt} export {result.version}: {result.rows} ({'reused' if result.reused else 'new'})")
    return dg.MaterializeResult(metadata={
        **({"pair_provenance": dg.MetadataValue.json(provenance)} if provenance is not None else {}),
        "dataset_version": result.version,
        # the DuckLake snapshot the files were read from (`flywheel datasets --snapshot N` rebuilds them)
        "warehouse_snapshot": result.snapshot if result.snapshot is not None else "unavailable (file backend)",
        "path": dg.MetadataValue.path(str(result.directory)),
        "rows_per_file": dg.MetadataValue.json(result.rows),
        "dagster/row_count": dg.MetadataValue.int(sum(result.rows.values())),
        "valid": bool(train.get("valid", False)),
        "format_errors": dg.MetadataValue.json(train.get("errors", {})),
        "warnings": dg.MetadataValue.json(train.get("warnings", {})),
        "token_counting": train.get("token_counting", ""),
        "tokens_per_example": dg.MetadataValue.json(train.get("tokens_per_example", {})),
        "tokens_per_assistant_turn": dg.MetadataValue.json(train.get("tokens_per_assistant_turn", {})),
        "examples_over_token_limit": train.get("examples_over_limit", 0),
        "score_distribution": dg.MetadataValue.md(md_bar_chart(distribution)),
        "target_model": config.model,
        "epochs": train.get("epochs", 0),
        "estimated_training_tokens": train.get("estimated_training_tokens", 0),
        "estimated_cost_usd": dg.MetadataValue.float(float(train["estimated_cost_usd"]))
        if train.get("estimated_cost_usd") is not None else dg.MetadataValue.text("unknown price"),
    })


@dg.asset(group_name=DATASETS_GROUP, pool=WAREHOUSE_POOL, kinds={"json"}, deps=[training_examples],
          description="Chat-format SFT files (train/validation) under exports/<dataset_version>/.")
def sft_jsonl_export(context: dg.AssetExecutionContext, config: ExportConfig, warehouse: WarehouseResource,
                     exports: ExportsResource) -> dg.MaterializeResult:
    return _export(context, config, warehouse, exports, "sft", "trl_kto")


@dg.asset(group_name=DATASETS_GROUP, pool=WAREHOUSE_POOL, kinds={"json"}, deps=[preference_pairs],
          description="Preference-format (DPO) files (train/validation) under exports/<dataset_version>/.")
def dpo_jsonl_export(context: dg.AssetExecutionContext, config: ExportConfig, warehouse: WarehouseResource,
                     exports: ExportsResource) -> dg.MaterializeResult:
    return _export(context, config, warehouse, exports, "dpo", "trl_dpo")
