"""``$FLYWHEEL_HOME/routing.json``, the routing table the outreach app reads (written atomically
by the ``routing_table`` asset; its format and the choice are in core/routing.py), the published
model measurements ``model_stats.json`` (the ``model_choice_stats`` asset; core/model_snapshot.py),
and the small Python API over both.

``choose_model(lead_id, organization_id, task_type)`` looks up the family
``flywheel-<organization or global>-<task_type>``, falling back to the global family and
then to ``task_type`` ``all``, and returns the arm for the lead. With ``strategy`` (one of
core/model_choice.py's ``STRATEGIES``) it ranks the candidate models by their measured outcomes
instead, unless an experiment is running for the lead's family: then the lead's sticky arm wins.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flywheel_pipeline import paths
from flywheel_pipeline.core import model_choice
from flywheel_pipeline.core import routing as table_rules
from flywheel_pipeline.core.atomic_json import write_json_atomic
from flywheel_pipeline.core.catalog import Catalog, CatalogError, load_catalog
from flywheel_pipeline.core.model_choice import ChoiceError, Constraints
from flywheel_pipeline.core.model_snapshot import candidates as routing_candidates
from flywheel_pipeline.core.model_snapshot import empty_snapshot


def routing_path() -> Path:
    return paths.routing_path()


def write_routing(table: dict[str, Any], path: Path | None = None) -> Path:
    return write_json_atomic(table, path or routing_path())


def load_routing(path: Path | None = None) -> dict[str, Any]:
    path = path or routing_path()
    if not path.exists():
        return {"families": {}}
    return json.loads(path.read_text())


def load_model_stats(path: Path | None = None) -> dict[str, Any]:
    """The published measurements (an empty snapshot before the first ``model_choice_stats`` run)."""
    path = path or paths.model_stats_path()
    if not path.exists():
        return empty_snapshot()
    return json.loads(path.read_text())


def write_model_stats(snapshot: dict[str, Any], path: Path | None = None) -> Path:
    return write_json_atomic(snapshot, path or paths.model_stats_path())


def routing_catalog(snapshot: dict[str, Any], override: Path | None = None) -> Catalog:
    """The packaged catalog, ``$FLYWHEEL_HOME/catalog.yaml``, and the registry's models the
    snapshot names."""
    catalog = load_catalog(override if override is not None else paths.catalog_path())
    return catalog.with_registry(tuple(r) for r in snapshot.get("registry_models") or ())


def choose_model(lead_id: str, organization_id: str | None, task_type: str = "all", *,
                 table: dict[str, Any] | None = None, strategy: str | None = None,
                 candidates: Sequence[str] | None = None, constraints: Constraints = Constraints(),
                 snapshot: dict[str, Any] | None = None, catalog: Catalog | None = None,
                 fallbacks: int = model_choice.DEFAULT_FALLBACKS,
                 tolerance: float = model_choice.DEFAULT_TOLERANCE) -> dict[str, Any]:
    """The model this lead's next message should use: ``model_id``, ``version``, ``ab_group``,
    ``experiment_id`` and ``allocation`` (record the last two in the message's ``metadata``; the
    A/B analysis reads them), the template to write it with (:func:`choose_template`'s fields), ``source`` (``experiment``, ``strategy``, ``routing_table`` or
    ``default``), ``strategy``, ``reasons`` in words and the ``fallback`` chain.

    Without ``strategy`` the routing table decides as before (the fallback chain is then the
    ``balanced`` ranking of the task's catalog models). Raises ChoiceError on bad input (unknown
    strategy or model, empty candidates, constraints nothing meets) and LookupError when there is
    no strategy, no route and no default."""
    table = table if table is not None else load_routing()
    return route_answer(lead_id, organization_id, task_type, table=table, strategy=strategy, candidates=candidates,
                        constraints=constraints, snapshot=snapshot, catalog=catalog, fallbacks=fallbacks,
                        tolerance=tolerance)


def route_answer(lead_id: str, organization_id: str | None, task_type: str, *, table: dict[str, Any],
                 strategy: str | None, candidates: Sequence[str] | None, constraints: Constraints,
                 snapshot: dict[str, Any] | None, catalog: Catalog | None, fallbacks: int,
                 tolerance: float) -> dict[str, Any]:
    """The one function that builds the /route answer (a dict; ``choose_model`` returns it too)."""
    if strategy is not None and strategy not in model_choice.STRATEGIES:
        raise model_choice.unknown_strategy(strategy)
    snapshot = snapshot if snapshot is not None else load_model_stats()
    if catalog is None:
        try:
            catalog = routing_catalog(snapshot)
        except CatalogError:
            if strategy is not None:
                raise
            catalog = Catalog({})  # the routing table decides; only the fallback chain needs the catalog
    metric = snapshot.get("quality_metric") or model_choice.DEFAULT_QUALITY_METRIC
    alpha = float(snapshot.get("alpha") or model_choice.DEFAULT_ALPHA)
    experiment = _running_experiment(table, organization_id, task_type)
    ranked_by = strategy or "balanced"
    try:
        choice = _choice(snapshot, catalog, organization_id, task_type, candidates, strategy or "balanced",
                         constraints, metric, alpha, tolerance, fallbacks)
    except ChoiceError as exc:
        if (strategy is not None and experiment is None) or (candidates is not None and exc.code != "unsatisfiable"):
            raise
        choice = None  # the table or the experiment decides; the fallback chain is best effort
    template = choose_template(lead_id, organization_id, task_type, table=table)
    if experiment is None and strategy is not None:
        assert choice is not None
        return {"model_id": choice.model_id, "version": None, "ab_group": "strategy", "experiment_id": None,
                "allocation": None, "source": "strategy", "strategy": strategy, "reasons": list(choice.reasons),
                "fallback": list(choice.fallback), **template}
    arm = table_rules.model_for_lead(table, lead_id, organization_id, task_type)  # LookupError: no route at all
    if experiment is not None:
        source = "experiment"
        reasons = [f"an experiment is running for {experiment}: the lead's sticky {arm['ab_group']} arm "
                   f"({arm['model_id']}) wins over {'the ' + strategy + ' strategy' if strategy else 'any strategy'}"]
        if choice is not None and strategy is not None:
            reasons.append(f"{strategy} would pick {choice.model_id}: {choice.reasons[0]}")  # a copy: cached
    elif arm["experiment_id"] is not None:
        source = "routing_table"
        reasons = [f"routing.json: the {arm['ab_group']} of its family ({arm['model_id']}); no strategy asked"]
    else:
        source = "default"
        reasons = [f"routing.json routes nothing for this organization and task: the default model {arm['model_id']}"]
    entry = catalog.get(arm["model_id"])
    fallback = model_choice.fallback_chain(choice.ranked if choice is not None else [], fallbacks,
                                           (arm["model_id"], entry.provider if entry is not None else None))
    return {**arm, "source": source, "strategy": strategy, "reasons": reasons, "fallback": fallback, **template}


def choose_template(lead_id: str, organization_id: str | None, task_type: str = "all", *,
                    table: dict[str, Any] | None = None) -> dict[str, Any]:
    """The template this lead's next message should be written with: template_id, template_version
    (record both as the message's top-level fields), template_ab_group, template_experiment_id and
    template_allocation (record the last two in its ``metadata``); all None when none is routed."""
    return table_rules.template_for_lead(table if table is not None else load_routing(), lead_id,
                                        organization_id, task_type)


class _ChoiceCache:
    """The strategy's choice depends on the organization, task, candidates, strategy and
    constraints, not on the lead: kept per published snapshot and catalog (held here, so a new
    one is never mistaken for an old one), at most ``size`` entries."""

    def __init__(self, size: int = 4096):
        self.size = size
        self.owner: tuple[Any, Any] | None = None
        self.entries: dict[tuple, Any] = {}

    def get(self, snapshot: dict[str, Any], catalog: Catalog, key: tuple, compute) -> Any:
        if self.owner is None or self.owner[0] is not snapshot or self.owner[1] is not catalog:
            self.owner, self.entries = (snapshot, catalog), {}
        if key not in self.entries:
            if len(self.entries) >= self.size:
                self.entries.clear()
            try:
                self.entries[key] = compute()
            except ChoiceError as exc:
                self.entries[key] = exc
        found = self.entries[key]
        if isinstance(found, ChoiceError):
            raise found
        return found


_CACHE = _ChoiceCache()


def _choice(snapshot: dict[str, Any], catalog: Catalog, organization_id: str | None, task_type: str,
            candidates: Sequence[str] | None, strategy: str, constraints: Constraints, metric: str, alpha: float,
            tolerance: float, fallbacks: int) -> model_choice.Choice:
    key = (organization_id, task_type, None if candidates is None else tuple(candidates), strategy, constraints,
           tolerance, fallbacks)
    return _CACHE.get(snapshot, catalog, key, lambda: model_choice.choose(
        routing_candidates(catalog, snapshot, organization_id, task_type, candidates), strategy, constraints,
        metric=metric, alpha=alpha, tolerance=tolerance, fallbacks=fallbacks))


def _running_experiment(table: dict[str, Any], organization_id: str | None, task_type: str) -> str | None:
    """The family whose arms the lead would get from the table, when it runs an experiment (an arm
    that is not the champion); None otherwise."""
    families = table.get("families", {})
    for org in (organization_id, None):
        for task in (task_type, "all"):
            name = f"flywheel-{org or 'global'}-{task}"
            family = families.get(name)
            if family and family.get("arms"):
                return name if any(a["ab_group"] != "champion" for a in family["arms"]) else None
    return None


def running_experiments(path: Path | None = None) -> list[str]:
    """``family:experiment_id`` of every family that routes traffic to a challenger, sorted."""
    return table_rules.running_experiments(load_routing(path))


def write_template_families(families: dict[str, Any], path: Path | None = None) -> Path:
    """Replace the published table's ``template_families`` (the model families stay as they are)."""
    table = load_routing(path)
    table["template_families"] = families
    return write_routing(table, path)
