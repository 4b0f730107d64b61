"""Dataset assets: the redacted text pool, training examples, preference pairs and the
validated fine-tuning exports (SFT and DPO), with the checks that gate fine-tuning."""

import json
from pathlib import Path

import dagster as dg
from pydantic import Field

from flywheel_pipeline.core.finetune_format import validate_file
from flywheel_pipeline.core.pii import contains_contact_pii
from flywheel_pipeline.defs.metadata import md_bar_chart, md_table
from flywheel_pipeline.defs.outcomes import outcome_labels
from flywheel_pipeline.defs.resources import WAREHOUSE_POOL, ExportsResource, WarehouseResource
from flywheel_pipeline.warehouse.datasets import (PairConfig, SelectionConfig, build_preference_pairs,
                                                  build_training_examples, export_jsonl, redact_new_messages)

DATASETS_GROUP = "datasets"


@dg.asset(group_name=DATASETS_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb", "python"}, deps=[outcome_labels],
          description="PII-redacted prompt and message text of every mature, delivered message "
                      "(incremental: each message is redacted once).")
def redacted_messages(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        result = redact_new_messages(con, progress=context.log.info)
        total = con.execute("SELECT count(*) FROM redacted_messages").fetchone()[0]
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(int(total)), "redacted_now": result.redacted,
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
        scores = con.execute("SELECT least(floor(quality_score * 10), 9)::INT, count(*) FROM training_examples "
                             "GROUP BY 1 ORDER BY 1").fetchall()
        by_task = con.execute("SELECT task_type, framework, count(*) FILTER (label), count(*) FILTER (NOT label) "
                              "FROM training_examples GROUP BY ALL ORDER BY 3 DESC").fetchall()
    context.log.info(f"training examples: {stats}")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(stats["examples"]), **stats,
        "config": dg.MetadataValue.json(config.model_dump()),
        "score_distribution": dg.MetadataValue.md(md_bar_chart(
            [(f"[{b / 10:.1f}, {(b + 1) / 10:.1f})", int(n)) for b, n in scores])),
        "by_task_and_framework": dg.MetadataValue.md(md_table(
            ["task_type", "framework", "positives", "negatives"], by_task))})


class PreferencePairsConfig(dg.Config):
    min_margin: float = Field(0.3, description="Preferred score minus non-preferred score, at least.")
    organization_id: str | None = None
    validation_fraction: float = 0.1
    limit: int | None = None


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
        margins = con.execute("SELECT round(margin, 1) AS m, count(*) FROM preference_pairs GROUP BY 1 ORDER BY 1"
                              ).fetchall()
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(stats["pairs"]), **stats,
        "margin_distribution": dg.MetadataValue.md(md_bar_chart([(f"{m:.1f}", int(n)) for m, n in margins]))})


class ExportConfig(dg.Config):
    model: str = Field("gpt-4o-mini-2024-07-18", description="Target model: token encoding, limit and price.")
    epochs: int | None = Field(None, description="Epochs for the estimate (default: OpenAI's heuristic).")
    price_per_million: float | None = Field(None, description="USD per 1M training tokens (default: list price).")
    include_trl: bool = Field(False, description="Also write TRL formats (KTO with SFT, prompt/chosen/rejected "
                                                 "with DPO) for local training.")


def _export(context: dg.AssetExecutionContext, config: ExportConfig, warehouse: WarehouseResource,
            exports: ExportsResource, fmt: str, trl: str) -> dg.MaterializeResult:
    formats = [fmt] + ([trl] if config.include_trl else [])
    with warehouse.connect() as con:
        result = export_jsonl(con, Path(exports.path), formats)
        if fmt == "sft":
            scores = con.execute("SELECT least(floor(quality_score * 10), 9)::INT, count(*) FROM training_examples "
                                 "WHERE label GROUP BY 1 ORDER BY 1").fetchall()
            distribution = [(f"[{b / 10:.1f}, {(b + 1) / 10:.1f})", int(n)) for b, n in scores]
        else:
            scores = con.execute("SELECT round(preferred_score, 1), round(non_preferred_score, 1), count(*) "
                                 "FROM preference_pairs GROUP BY ALL ORDER BY 3 DESC LIMIT 15").fetchall()
            distribution = [(f"{p:.1f} over {q:.1f}", int(n)) for p, q, n in scores]
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
        "dataset_version": result.version,
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


def _latest_export_files(context: dg.AssetCheckExecutionContext, asset_key: dg.AssetKey, fmt: str) -> list[Path]:
    event = context.instance.get_latest_materialization_event(asset_key)
    if event is None or event.asset_materialization is None:
        return []
    directory = Path(event.asset_materialization.metadata["path"].value)
    return sorted(directory.glob(f"{fmt}.*.jsonl"))


def _validation_check(context: dg.AssetCheckExecutionContext, asset_key: dg.AssetKey, fmt: str, kind: str
                      ) -> dg.AssetCheckResult:
    files = _latest_export_files(context, asset_key, fmt)
    train = [f for f in files if f.name == f"{fmt}.train.jsonl"]
    if not train:
        return dg.AssetCheckResult(passed=False, metadata={"reason": "no export found"})
    report = validate_file(train[0], kind=kind)
    d = report.as_dict()
    return dg.AssetCheckResult(passed=report.ok, metadata={
        "examples": d["examples"], "minimum_examples": d["minimum_examples"],
        "errors": dg.MetadataValue.json(d["errors"]), "first_error_lines": dg.MetadataValue.json(d["first_error_lines"]),
        "report": dg.MetadataValue.md(f"```\n{report.to_text()}\n```")})


@dg.asset_check(asset=sft_jsonl_export, blocking=True,
                description="The SFT file passes the fine-tuning validator (format rules, at least 10 examples).")
def sft_export_is_valid(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    return _validation_check(context, sft_jsonl_export.key, "sft", "chat")


@dg.asset_check(asset=dpo_jsonl_export, blocking=True,
                description="The DPO file passes the fine-tuning validator (format rules, at least 10 examples).")
def dpo_export_is_valid(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    return _validation_check(context, dpo_jsonl_export.key, "dpo", "preference")


def _pii_check(context: dg.AssetCheckExecutionContext, asset_key: dg.AssetKey, fmt: str) -> dg.AssetCheckResult:
    hits, lines, first = 0, 0, None
    for path in _latest_export_files(context, asset_key, fmt):
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                lines += 1
                if contains_contact_pii(line):
                    hits += 1
                    first = first or f"{path.name}:{number}"
    return dg.AssetCheckResult(passed=hits == 0, metadata={
        "lines_scanned": lines, "lines_with_email_or_phone": hits, "first_hit": first or ""})


@dg.asset_check(asset=sft_jsonl_export, blocking=True,
                description="No example of the SFT export contains an e-mail address or phone number.")
def sft_export_has_no_contact_pii(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    return _pii_check(context, sft_jsonl_export.key, "sft")


@dg.asset_check(asset=dpo_jsonl_export, blocking=True,
                description="No example of the DPO export contains an e-mail address or phone number.")
def dpo_export_has_no_contact_pii(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    return _pii_check(context, dpo_jsonl_export.key, "dpo")


DATASET_ASSETS = [redacted_messages, training_examples, preference_pairs, sft_jsonl_export, dpo_jsonl_export]
DATASET_CHECKS = [sft_export_is_valid, dpo_export_is_valid, sft_export_has_no_contact_pii,
                  dpo_export_has_no_contact_pii]
