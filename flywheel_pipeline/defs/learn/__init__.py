"""Learning without training (issue 18): what the flywheel measures from what was sent, in the
``learn`` group."""

LEARN_GROUP = "learn"
