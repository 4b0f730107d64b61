"""The learn job (`flywheel learn`): what the flywheel measures from what was sent."""

import dagster as dg

from flywheel_pipeline.defs.learn import LEARN_GROUP

LEARN_JOB_NAME = "learn"

learn_job = dg.define_asset_job(
    LEARN_JOB_NAME,
    selection=dg.AssetSelection.groups(LEARN_GROUP),
    description="Measure what was sent: feedback beside the labels, what drives outcomes, the cost per outcome.",
    executor_def=dg.in_process_executor,
    tags={"flywheel/kind": "learn"},
)
