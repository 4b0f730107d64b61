"""The ingestion service's parts: the durable landing writer (and, next, the HTTP app)."""
