"""The ingestion service (FastAPI on uvicorn): webhooks and records into the landing zone."""
