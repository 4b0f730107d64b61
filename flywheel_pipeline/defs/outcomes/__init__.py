"""Outcomes: reply understanding and per-message outcome labels, with their data contracts."""
