"""The model the flywheel starts from: it serves every family without a deployed champion,
is the baseline of lifts, the default base model of fine-tuning and the default target of
token counts and cost estimates."""

DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
