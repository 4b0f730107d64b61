"""The domain, free of Dagster: policies, parsers and formats (the demo-world simulator lives
in ``flywheel_pipeline.simulator``)."""
