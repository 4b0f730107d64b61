"""Outcome Flywheel: outcomes of LLM-written outreach -> labels -> training data -> better models."""

__version__ = "0.1.0"
