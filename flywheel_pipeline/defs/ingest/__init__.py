"""Ingestion: one asset per landing source; the refresh job, the landing sensor and the daily
refresh schedule."""
