"""The experiment statistics engine: pure numpy/scipy, no Dagster, inputs are sufficient
statistics per arm (aggregation stays in SQL) and the unit of analysis is the lead."""
