"""Datasets: the redacted text pool, training examples, preference pairs and the validated
fine-tuning exports, with the checks that gate fine-tuning, and the datasets job."""
