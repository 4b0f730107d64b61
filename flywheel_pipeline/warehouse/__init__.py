"""The DuckDB warehouse: schema, ingestion from the landing zone, and outcome labelling (SQL)."""
