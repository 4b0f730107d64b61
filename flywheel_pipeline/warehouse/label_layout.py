"""How a label is stored: the funnel flags packed into one integer, and the SQL that packs and
reads them back. ``warehouse/labels.py`` writes ``packed_labels`` with it and
``warehouse/schema.py`` renders the ``message_labels`` view that unpacks it, so both read
the one layout below.

Writing one row per message is a large share of a full relabel: 1M labels with the flags
packed (12 columns) wrote in 0.13 s, with a BOOLEAN column per flag, stage and is_terminal
(25 columns) in 0.29 s (docs/benchmarks.md). Readers never see the packing: ``message_labels`` and
``outcome_labels`` have a ``BOOLEAN`` column per flag, ``stage`` and ``is_terminal``.
"""

from __future__ import annotations

from collections.abc import Callable

from flywheel_pipeline.core.label_policy import STAGES

# The flags in bit order (bit 0 first). Append new flags at the end: the bits of existing
# flags must not move, or stored labels would be misread.
FLAG_BITS: tuple[str, ...] = ("delivered", "bounced", "opened", "clicked", "replied", "positive_reply",
                              "meeting_booked", "meeting_completed", "deal_closed", "deal_lost",
                              "unsubscribed", "spam_reported")
FLAG: dict[str, int] = {name: 1 << i for i, name in enumerate(FLAG_BITS)}

# A label is terminal (final before maturity_days pass) when one of these is set.
TERMINAL_FLAGS: tuple[str, ...] = ("deal_closed", "deal_lost", "bounced", "spam_reported", "unsubscribed")
TERMINAL_MASK: int = sum(FLAG[name] for name in TERMINAL_FLAGS)


def pack_flags_sql() -> str:
    """The USMALLINT of the boolean columns named as in FLAG_BITS."""
    return "(" + " | ".join(f"(CASE WHEN {name} THEN {FLAG[name]} ELSE 0 END)" for name in FLAG_BITS) + ")::USMALLINT"


def unpacked_flag_sql(name: str, column: str = "flags") -> str:
    """One flag read back from a packed column."""
    return f"({column} & {FLAG[name]} <> 0)"


def deepest_stage_sql(flag: Callable[[str], str]) -> str:
    """SQL for the index in STAGES of the deepest stage reached (0 = 'sent').

    Every stage after 'sent' is reached when the flag of the same name is set (the rule of
    core.label_policy.deepest_stage); ``flag(name)`` renders that flag as a boolean."""
    cases = " ".join(f"WHEN {flag(stage)} THEN {i}" for i, stage in reversed(list(enumerate(STAGES))) if i)
    return f"CASE {cases} ELSE 0 END"


def stage_name_sql(flag: Callable[[str], str]) -> str:
    """SQL for the name of the deepest stage reached."""
    names = ", ".join(f"'{stage}'" for stage in STAGES)
    return f"[{names}][{deepest_stage_sql(flag)} + 1]"
