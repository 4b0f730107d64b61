"""The checks that gate fine-tuning: the latest exports pass the fine-tuning validator and hold
no contact details."""

from pathlib import Path

import dagster as dg

from flywheel_pipeline.core.finetune_format import validate_file
from flywheel_pipeline.core.pii import contains_contact_pii
from flywheel_pipeline.defs.datasets.assets import dpo_jsonl_export, sft_jsonl_export


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
