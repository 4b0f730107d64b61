"""The domain, free of Dagster: policies, parsers, formats and the demo-world simulator."""
