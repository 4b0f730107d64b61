"""Training: fine-tune through the configured backend, register, log to MLflow, evaluate offline;
the retrain job, its weekly schedule and the new-outcomes sensor."""
