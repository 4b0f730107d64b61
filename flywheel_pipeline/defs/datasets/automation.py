"""The datasets job (`flywheel datasets`)."""

import dagster as dg

from flywheel_pipeline.defs.datasets.assets import DATASETS_GROUP

DATASETS_JOB_NAME = "datasets"

datasets_job = dg.define_asset_job(
    DATASETS_JOB_NAME,
    selection=dg.AssetSelection.groups(DATASETS_GROUP),
    description="Redact new mature messages, select training examples and preference pairs, and write "
                "the validated SFT and DPO exports.",
    executor_def=dg.in_process_executor,
    tags={"flywheel/kind": "datasets"},
)
