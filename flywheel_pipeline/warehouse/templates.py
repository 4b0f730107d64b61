"""Prompt templates in the warehouse: ``prompt_templates`` (every version, immutable once added) and
``template_deployments`` (which version serves a task type: the champion, a challenger at its
traffic share, or archived), created by the migrations (warehouse/schema.py).

Lifecycle of a version: ``draft`` (stored, routes nothing) -> ``ready`` challenger at the first
rollout step -> ``deployed`` champion, or ``archived`` (rolled back, inconclusive, replaced).
The first template of a task type becomes its champion when added: there is nothing to compare it
with. Every later version reaches leads only as a challenger, through an experiment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import duckdb

from flywheel_pipeline.core.rollout import Challenger, choose_challenger
from flywheel_pipeline.core.templates import (TemplateRefused, WordRange, arm_key, check_id, check_template,
                                              check_version, content_hash, length_instruction, split_arm_key)
from flywheel_pipeline.core.versioning import parse as parse_version

STATUSES = ("draft", "ready", "deployed", "archived")


@dataclass(frozen=True)
class StoredTemplate:
    template_id: str
    version: str
    task_type: str
    text: str
    content_sha256: str
    fields: list[str]
    source: str
    parent_version: str | None
    rationale: str | None
    created_at: object
    status: str | None
    ab_group: str | None
    traffic_pct: float

    @property
    def key(self) -> str:
        return arm_key(self.template_id, self.version)


_SELECT = """SELECT t.template_id, t.version, t.task_type, t.text, t.content_sha256, t.fields, t.source,
                    t.parent_version, t.rationale, t.created_at, d.status, d.ab_group, coalesce(d.traffic_pct, 0)
             FROM prompt_templates t LEFT JOIN template_deployments d USING (template_id, version)"""


def _stored(row: tuple) -> StoredTemplate:
    return StoredTemplate(*row[:5], json.loads(row[5]), *row[6:12], float(row[12]))


def latest_version(con: duckdb.DuckDBPyConnection, template_id: str) -> str | None:
    versions = [r[0] for r in con.execute("SELECT version FROM prompt_templates WHERE template_id = ?",
                                          [template_id]).fetchall()]
    return max(versions, key=parse_version, default=None)


def versions(con: duckdb.DuckDBPyConnection, template_id: str) -> list[str]:
    return sorted((r[0] for r in con.execute("SELECT version FROM prompt_templates WHERE template_id = ?",
                                             [template_id]).fetchall()), key=parse_version)


def champion(con: duckdb.DuckDBPyConnection, task_type: str) -> StoredTemplate | None:
    row = con.execute(f"{_SELECT} WHERE d.task_type = ? AND d.status = 'deployed' ORDER BY d.updated_at DESC "
                      "LIMIT 1", [task_type]).fetchone()
    return None if row is None else _stored(row)


def challenger(con: duckdb.DuckDBPyConnection, task_type: str) -> StoredTemplate | None:
    row = con.execute(f"{_SELECT} WHERE d.task_type = ? AND d.status = 'ready' AND d.ab_group = 'challenger' "
                      "ORDER BY d.updated_at DESC LIMIT 1", [task_type]).fetchone()
    return None if row is None else _stored(row)


def get(con: duckdb.DuckDBPyConnection, template_id: str, version: str | None = None) -> StoredTemplate:
    version = version or latest_version(con, template_id)
    row = None if version is None else con.execute(f"{_SELECT} WHERE t.template_id = ? AND t.version = ?",
                                                   [template_id, version]).fetchone()
    if row is None:
        known = versions(con, template_id)
        raise KeyError(f"no template {template_id} {version or ''}".rstrip()
                       + (f" (versions: {', '.join(known)})" if known else ""))
    return _stored(row)


def same_instruction(con: duckdb.DuckDBPyConnection, parent: StoredTemplate, words: WordRange
                     ) -> StoredTemplate | None:
    """A version already derived from ``parent`` that asks for this length, if any (the optimizer
    does not test the same change of the same champion twice)."""
    rows = con.execute(f"{_SELECT} WHERE t.template_id = ? AND t.parent_version = ? ORDER BY t.created_at",
                       [parent.template_id, parent.version]).fetchall()
    return next((t for t in map(_stored, rows) if length_instruction(t.text) == words), None)


def list_templates(con: duckdb.DuckDBPyConnection) -> list[StoredTemplate]:
    return [_stored(r) for r in con.execute(f"{_SELECT} ORDER BY t.template_id, t.created_at").fetchall()]


def _deploy(con: duckdb.DuckDBPyConnection, template_id: str, version: str, task_type: str, status: str,
            ab_group: str | None, traffic_pct: float) -> None:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}")
    # delete and insert, not an upsert: DuckLake has no keys (the caller's transaction makes it one change)
    con.execute("DELETE FROM template_deployments WHERE template_id = ? AND version = ?", [template_id, version])
    con.execute("INSERT INTO template_deployments VALUES (?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
                [template_id, version, task_type, status, ab_group, traffic_pct])


@dataclass(frozen=True)
class Added:
    template: StoredTemplate
    deployment: str  # what happened: 'champion', 'challenger at N%', 'draft', 'replaced X', 'waits'


def add_template(con: duckdb.DuckDBPyConnection, *, template_id: str, version: str, text: str,
                 task_type: str = "all", source: str = "cli", parent_version: str | None = None,
                 rationale: str | None = None, as_challenger_pct: float | None = None) -> Added:
    """Store a new version (TemplateRefused: bad name, not a semantic version, not above the latest,
    a duplicate, or a text that does not render with the lead's fields). The task type's first
    template becomes its champion; with ``as_challenger_pct`` a later one starts as the challenger
    at that share (see start_challenger); otherwise it is a draft."""
    check_id(template_id)
    if not task_type or not task_type.replace("_", "").isalnum():
        raise TemplateRefused(f"task type {task_type!r}: letters, digits and '_' only")
    if con.execute("SELECT 1 FROM prompt_templates WHERE template_id = ? AND version = ?",
                   [template_id, version]).fetchone():
        raise TemplateRefused(f"{template_id} {version} already exists; a stored template never changes: add the "
                              "new content as a new version")
    check_version(version, latest_version(con, template_id))
    fields = check_template(text)
    con.execute("INSERT INTO prompt_templates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
                [template_id, version, task_type, text, content_hash(text), json.dumps(list(fields)), source,
                 parent_version, rationale])
    if champion(con, task_type) is None:
        _deploy(con, template_id, version, task_type, "deployed", "champion", 100.0)
        what = "champion (the first template of its task type)"
    else:
        _deploy(con, template_id, version, task_type, "draft", None, 0.0)
        what = "draft"
        if as_challenger_pct is not None:
            what = start_challenger(con, template_id, version, as_challenger_pct)
    return Added(get(con, template_id, version), what)


def start_challenger(con: duckdb.DuckDBPyConnection, template_id: str, version: str, first_step_pct: float) -> str:
    """Route the version to its task type's experiment as the challenger at the first step: never
    more. A challenger still at the first step is replaced (archived); one that has earned a step
    finishes first, and this version stays a draft ('waits')."""
    new = get(con, template_id, version)
    if new.status not in ("draft", None):
        raise TemplateRefused(f"{new.key} is {new.status}; only a draft can start as a challenger")
    current = challenger(con, new.task_type)
    choice = choose_challenger(None if current is None else Challenger(current.key, current.version,
                                                                       current.traffic_pct),
                               (new.key, version), {new.key}, first_step_pct)
    if choice.action == "wait":
        return f"draft: waits, challenger {current.key} is mid-rollout at {current.traffic_pct:g}%"
    if choice.action == "replace":
        old_id, old_version = split_arm_key(choice.replaced)
        _deploy(con, old_id, old_version, new.task_type, "archived", "replaced", 0.0)
    _deploy(con, template_id, version, new.task_type, "ready", "challenger", first_step_pct)
    return f"challenger at {first_step_pct:g}%" + (f" (replaced {choice.replaced})" if choice.replaced else "")


def set_state(con: duckdb.DuckDBPyConnection, key: str, status: str, ab_group: str | None, traffic_pct: float) -> None:
    template_id, version = split_arm_key(key)
    task_type = get(con, template_id, version).task_type
    _deploy(con, template_id, version, task_type, status, ab_group, traffic_pct)


def live(con: duckdb.DuckDBPyConnection) -> list[tuple[str, StoredTemplate, StoredTemplate | None]]:
    """Per task type with a champion: (task type, champion, challenger or None)."""
    tasks = [r[0] for r in con.execute("SELECT DISTINCT task_type FROM template_deployments WHERE status = "
                                       "'deployed' ORDER BY 1").fetchall()]
    return [(task, champion(con, task), challenger(con, task)) for task in tasks]
