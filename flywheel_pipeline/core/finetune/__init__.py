"""Fine-tuning backends behind one protocol (see base.py)."""
