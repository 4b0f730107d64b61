"""Leaderboard: every model's outcomes, ranked, and how fast the flywheel turns."""
