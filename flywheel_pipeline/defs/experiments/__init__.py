"""Experiments: the routing table, A/B statistics and verdicts, applying them; the experiments
job and the sensor that evaluates running experiments."""
