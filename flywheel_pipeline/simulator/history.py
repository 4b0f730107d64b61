"""The simulated outreach app's memory of which routing table it used from which day."""

from __future__ import annotations

import json
from datetime import date, timedelta

from flywheel_pipeline import paths


def routing_history(follow_from: date | None) -> tuple[tuple[date, dict], ...]:
    """The tables the simulated outreach app used, as (first day, routing table) in date order
    (``$FLYWHEEL_HOME/simulator/routing_history.json``). With ``follow_from``, a routing.json
    whose arms (models' or templates') differ from the last table it used is adopted from that day on (or from the day
    after the last adoption: the memory only grows, the past is not rewritten)."""
    from flywheel_pipeline.core.atomic_json import write_json_atomic
    from flywheel_pipeline.routing import load_routing

    path = paths.simulator_dir() / "routing_history.json"
    history = [(date.fromisoformat(d), t) for d, t in json.loads(path.read_text())] if path.exists() else []
    if follow_from is not None:
        table = load_routing()
        def arms(t: dict) -> tuple:
            return t.get("families") or {}, t.get("template_families") or {}

        if any(arms(table)) and (not history or arms(history[-1][1]) != arms(table)):
            since = max(follow_from, history[-1][0] + timedelta(days=1)) if history else follow_from
            history.append((since, table))
            write_json_atomic([[d.isoformat(), t] for d, t in history], path)
    return tuple(history)
