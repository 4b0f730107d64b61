"""The control actions (the Stage 3 training API), one function each, shared by the admin HTTP API
(service/routers/training.py) and the CLI (cli/training.py):

``retrain`` launches the ``retrain`` job as a real Dagster run in the background (launcher.py);
``run_status`` reads a run; ``models`` lists the registry with each model's role; ``deploy`` makes
a registered version its family's challenger at a traffic share (a new experiment: sticky arms by
lead); ``promote_winner`` makes the challenger champion when the experiment's statistics declare it
the winner (or, with ``force`` and a reason, recorded, when they do not); ``rollback`` takes a
challenger off traffic or brings back a former champion; ``stats`` summarises it all.

Every action that changes something (retrain, deploy, promote, rollback) writes one
``control_audit`` row, refused or not, in the warehouse before it returns: the change and its row
commit together, and ``routing.json`` is rewritten from the registry inside that transaction, so an
action that cannot be recorded did not happen. Refusals raise ``core.control.ControlRefused``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import duckdb

from flywheel_pipeline import paths
from flywheel_pipeline.core.assignment import DEFAULT_ROLLOUT_STEPS
from flywheel_pipeline.core.control import Actor, ControlRefused, check_deploy_share, status_filter
from flywheel_pipeline.core.models import DEFAULT_MODEL
from flywheel_pipeline.warehouse import control as wh
from flywheel_pipeline.warehouse import control_audit as audit
from flywheel_pipeline.warehouse.schema import connect_waiting, transaction

log = logging.getLogger("flywheel.control")

RETRAIN_JOB = "retrain"  # defs/training/automation.RETRAIN_JOB_NAME (not imported: it loads Dagster)
WAREHOUSE_WAIT_S = 60.0  # how long an action waits for a Dagster run's warehouse lock (then busy)


@dataclass
class Outcome:
    """What an action returns; ``audit_id`` names its control_audit row."""

    answer: dict[str, Any]
    detail: str
    model_id: str | None = None
    family: str | None = None
    run_id: str | None = None
    after: list[Callable[[], None]] = field(default_factory=list)  # once committed (MLflow, starting a run)
    audit_id: str | None = None


# One action at a time in this process: DuckDB refuses a second connection to one file with another
# configuration, and two transactions on the registry would conflict; other processes wait on the
# file's lock (connect_waiting).
_ONE_AT_A_TIME = threading.RLock()


@contextlib.contextmanager
def _warehouse() -> Iterator[duckdb.DuckDBPyConnection]:
    """A short read-write connection (reads too: see _ONE_AT_A_TIME), waiting for a Dagster run's lock
    up to ``WAREHOUSE_WAIT_S`` (then ``busy``)."""
    database = paths.warehouse_database()
    with _ONE_AT_A_TIME:
        try:
            con = connect_waiting(database, timeout_s=WAREHOUSE_WAIT_S, data_path=paths.warehouse_data_path())
        except duckdb.IOException as exc:
            raise ControlRefused("busy", f"the warehouse stayed locked by another process for {WAREHOUSE_WAIT_S:g}s "
                                         f"(a Dagster run is writing it): {exc}") from exc
        try:
            yield con
        finally:
            con.close()


def _act(actor: Actor, action: str, parameters: dict[str, Any],
         body: Callable[[duckdb.DuckDBPyConnection], Outcome]) -> Outcome:
    """Run ``body`` and its audit row in one transaction; a refusal or an error is recorded on its
    own (nothing of the action is kept) and raised again. What must follow the commit (starting the
    run, MLflow) runs after it; its failure is recorded too."""
    with _warehouse() as con:
        try:
            with transaction(con):
                outcome = body(con)
                outcome.audit_id = audit.record(con, actor, action, parameters, "ok", detail=outcome.detail,
                                                run_id=outcome.run_id, model_id=outcome.model_id,
                                                family=outcome.family)
        except ControlRefused as exc:
            audit.record(con, actor, action, parameters, exc.kind, detail=exc.detail, run_id=exc.run_id)
            raise
        except Exception as exc:
            audit.record(con, actor, action, parameters, "error", detail=f"{type(exc).__name__}: {exc}")
            raise
    try:
        for step in outcome.after:
            step()
    except Exception as exc:
        with _warehouse() as con:
            audit.record(con, actor, action, parameters, "error", run_id=outcome.run_id, model_id=outcome.model_id,
                         family=outcome.family, detail=f"after the change was recorded: {type(exc).__name__}: {exc}")
        raise
    outcome.answer["audit_id"] = outcome.audit_id
    return outcome


# ---- the routing table and MLflow, kept in step with the registry --------------------------------

def _publish_routing(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Rebuild routing.json from the registry (as experiment_decisions does: no new challenger is
    started here) and write it atomically."""
    from flywheel_pipeline.routing import load_routing, routing_path, write_routing
    from flywheel_pipeline.warehouse.routing_table import build_routing_table

    default = load_routing().get("default_model") or DEFAULT_MODEL
    table, _ = build_routing_table(con, default, DEFAULT_ROLLOUT_STEPS[0], set(), log.info)
    write_routing(table, routing_path())
    return table


def _alias_sync(con: duckdb.DuckDBPyConnection, family: str, answer: dict[str, Any]) -> Callable[[], None]:
    """After the commit: point the family's MLflow ``champion``/``challenger`` aliases at the registry's
    (skipped for a family MLflow never saw); a failure is reported in the answer, not fatal."""
    champion, challenger = wh.champion(con, family), wh.challenger(con, family)
    logged = con.execute("SELECT EXISTS (SELECT 1 FROM model_registry WHERE family = ? AND "
                         "mlflow_model_version IS NOT NULL)", [family]).fetchone()[0]

    def sync() -> None:
        if not logged:
            answer["mlflow"] = "not logged to MLflow: no aliases to move"
            return
        from flywheel_pipeline.tracking import default_tracking_uri, sync_aliases

        try:
            sync_aliases(default_tracking_uri(), family, champion.mlflow_model_version if champion else None,
                         challenger.mlflow_model_version if challenger else None)
            answer["mlflow"] = "aliases updated"
        except Exception as exc:  # noqa: BLE001 - the registry table is the source of truth
            log.warning("MLflow aliases for %s not updated: %s", family, exc)
            answer["mlflow"] = f"aliases NOT updated: {exc}"
    return sync


def _family_arms(table: dict[str, Any], family: str) -> dict[str, Any]:
    spec = table.get("families", {}).get(family, {})
    return {"experiment_id": spec.get("experiment_id"),
            "arms": [{k: a.get(k) for k in ("ab_group", "model_id", "version", "traffic_pct")}
                     for a in spec.get("arms", [])]}


def _resolve(con: duckdb.DuckDBPyConnection, ref: str, family: str | None) -> wh.Model:
    found = wh.find(con, ref, family)
    if not found:
        where = f" in family {family}" if family else ""
        raise ControlRefused("not_found", f"no registered model or version {ref!r}{where}")
    if len(found) > 1:
        raise ControlRefused("invalid", f"version {ref} exists in several families "
                                        f"({', '.join(m.family for m in found)}): name the family or the model id")
    return found[0]


# ---- the actions ---------------------------------------------------------------------------------

def retrain(actor: Actor) -> Outcome:
    """Launch the ``retrain`` job in the background; refused (``conflict``, with its run id) while a
    retrain run has not finished. Returns at once with the run id."""
    import dagster as dg

    from flywheel_pipeline import launcher
    from flywheel_pipeline.instance import ensure_local_dagster_home
    from flywheel_pipeline.run_guard import PID_TAG

    home = ensure_local_dagster_home()
    job = launcher.prepare(RETRAIN_JOB)
    lock = paths.retrain_lock_path()
    created: list = []
    with open(lock, "a") as held, dg.DagsterInstance.get() as instance:
        fcntl.flock(held, fcntl.LOCK_EX)  # check and create as one step, across processes

        def body(con: duckdb.DuckDBPyConnection) -> Outcome:
            running = launcher.unfinished_runs(instance, RETRAIN_JOB)
            if running:
                run = running[0]
                raise ControlRefused("conflict", f"a retrain is already running: run {run.run_id} "
                                                 f"({run.status.value})", run_id=run.run_id)
            run = launcher.create_run(instance, job, tags={"flywheel/trigger": f"control-{actor.channel}",
                                                           launcher.LAUNCHED_TAG: actor.name})
            created.append(run)
            answer = {"run_id": run.run_id, "job_name": RETRAIN_JOB, "status": run.status.value,
                      "dagster_home": str(home)}
            outcome = Outcome(answer, f"launched run {run.run_id}", run_id=run.run_id)
            outcome.after.append(lambda: answer.update(pid=launcher.start(instance, run.run_id)))
            return outcome

        try:
            return _act(actor, "retrain", {}, body)
        except BaseException as exc:
            for run in created:  # created, but not recorded or not started: it must not block the next one
                current = instance.get_run_by_id(run.run_id)
                if current is not None and current.status == dg.DagsterRunStatus.NOT_STARTED \
                        and current.tags.get(PID_TAG) == str(os.getpid()):
                    instance.report_run_failed(current, message=f"never started: {type(exc).__name__}: {exc}")
            raise


def run_status(run_id: str) -> dict[str, Any]:
    """A Dagster run: its status, start and end, each step's outcome (with the failure's message),
    and the model it produced (``fine_tuned_model``'s materialization), if any."""
    import dagster as dg

    from flywheel_pipeline.instance import ensure_local_dagster_home

    ensure_local_dagster_home()
    with dg.DagsterInstance.get() as instance:
        record = instance.get_run_record_by_id(run_id) if _is_run_id(run_id) else None
        if record is None:
            raise ControlRefused("not_found", f"no run {run_id} in the Dagster instance at {paths.dagster_home()}")
        run = record.dagster_run
        failures = {e.step_key: e.dagster_event.event_specific_data.error.message.strip()
                    for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
                    if e.dagster_event and getattr(e.dagster_event.event_specific_data, "error", None)}
        steps = [{"step": s.step_key, "status": s.status.value if s.status else None,
                  "start": _iso(s.start_time), "end": _iso(s.end_time),
                  **({"error": failures[s.step_key]} if s.step_key in failures else {})}
                 for s in sorted(instance.get_run_step_stats(run_id), key=lambda s: s.start_time or 0)]
        produced = None
        for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            materialization = event.asset_materialization
            if materialization and materialization.asset_key.to_user_string() == "fine_tuned_model":
                meta = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
                produced = {k: meta.get(k) for k in ("model_id", "family", "version", "backend")}
        return {"run_id": run_id, "job_name": run.job_name, "status": run.status.value,
                "finished": run.is_finished, "success": run.status == dg.DagsterRunStatus.SUCCESS,
                "start": _iso(record.start_time), "end": _iso(record.end_time),
                "launched_by": run.tags.get("flywheel/launched_by"), "steps": steps, "model": produced}


def _is_run_id(text: str) -> bool:
    import uuid

    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _iso(ts: float | None) -> str | None:
    from datetime import datetime, timezone

    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def models(status: str | None = None, family: str | None = None) -> dict[str, Any]:
    """The registry's models with their roles, filtered by ``status`` (roles or registry statuses)."""
    wanted = status_filter(status)
    if not paths.warehouse_exists():
        return {"models": []}
    with _warehouse() as con:
        rows = [m for m in wh.all_models(con) if (family is None or m.family == family)
                and (wanted is None or m.role in wanted or m.status in wanted)]
    return {"models": [m.as_dict() for m in rows]}


def deploy(actor: Actor, ref: str, traffic_pct: object, family: str | None = None) -> Outcome:
    """Make a candidate its family's challenger at ``traffic_pct`` (in (0, 50]): a new experiment, each
    lead's arm sticky (a hash of lead and experiment), evaluated and ramped by the experiments job."""
    parameters = {"version": ref, "traffic_pct": traffic_pct, "family": family}

    def body(con: duckdb.DuckDBPyConnection) -> Outcome:
        share = check_deploy_share(traffic_pct)
        model = _resolve(con, ref, family)
        if model.role != "candidate":
            why = {"champion": "is its family's champion",
                   "challenger": f"is already the challenger at {model.traffic_pct:g}% (the experiments move it on)",
                   "retired": "is retired; deploy a candidate or retrain",
                   "training": "is still training", "failed": "failed to train"}[model.role]
            raise ControlRefused("conflict", f"{model.model_id} ({model.family} {model.version}) {why}")
        running = wh.challenger(con, model.family)
        if running is not None:
            raise ControlRefused("conflict", f"{model.family} already runs an experiment: challenger "
                                             f"{running.model_id} ({running.version}) at {running.traffic_pct:g}%; "
                                             "roll it back or let its experiment finish first")
        wh.set_challenger(con, model.model_id, share)
        table = _publish_routing(con)
        answer = {"action": "deployed", "model_id": model.model_id, "family": model.family,
                  "version": model.version, "traffic_pct": share, **_family_arms(table, model.family)}
        outcome = Outcome(answer, f"{model.model_id} challenger at {share:g}%", model.model_id, model.family)
        outcome.after.append(_alias_sync(con, model.family, answer))
        return outcome

    return _act(actor, "deploy", parameters, body)


def promote_winner(actor: Actor, family: str | None = None, *, force: bool = False,
                   reason: str | None = None) -> Outcome:
    """Make the running challenger champion when its latest evaluation is ``promote`` at the 50/50
    efficacy step (its weighted score significantly higher, no harm). Otherwise refused with the
    statistics' own reason, unless ``force`` with a ``reason`` (recorded in the audit and the answer)."""
    parameters = {"family": family, "force": force, "reason": reason}

    def body(con: duckdb.DuckDBPyConnection) -> Outcome:
        if force and not (reason or "").strip():
            raise ControlRefused("invalid", "force needs a reason (it is recorded in the audit)")
        name = _experiment_family(con, family)
        challenger = wh.challenger(con, name)
        if challenger is None:
            raise ControlRefused("conflict", f"{name} runs no experiment (no challenger has traffic)")
        verdict = wh.latest_verdict(con, name, challenger.model_id)
        significant = verdict is not None and verdict.decision == "promote" and verdict.step == "efficacy"
        said = _verdict_words(challenger, verdict)
        if not significant and not force:
            raise ControlRefused("conflict", f"no significant winner in {name}: {said}")
        old = wh.make_champion(con, name, challenger.model_id)
        table = _publish_routing(con)
        answer = {"action": "promoted" + (" (forced)" if force and not significant else ""),
                  "model_id": challenger.model_id, "family": name, "version": challenger.version,
                  "replaced": old, "statistics": said, "verdict": verdict.as_dict() if verdict else None,
                  "forced": bool(force and not significant), "reason": reason if force else None,
                  **_family_arms(table, name)}
        detail = f"{challenger.model_id} champion of {name}" + (f"; FORCED ({reason}) over: {said}"
                                                               if force and not significant else f"; {said}")
        outcome = Outcome(answer, detail, challenger.model_id, name)
        outcome.after.append(_alias_sync(con, name, answer))
        return outcome

    return _act(actor, "promote", parameters, body)


def _experiment_family(con: duckdb.DuckDBPyConnection, family: str | None) -> str:
    if family is not None:
        if not wh.family_exists(con, family):
            raise ControlRefused("not_found", f"no model family {family!r} in the registry")
        return family
    running = wh.families_with_challengers(con)
    if not running:
        raise ControlRefused("conflict", "no experiment is running (no family has a challenger with traffic)")
    if len(running) > 1:
        raise ControlRefused("invalid", f"several experiments are running ({', '.join(running)}): name the family")
    return running[0]


def _verdict_words(challenger: wh.Model, verdict: wh.Verdict | None) -> str:
    if verdict is None:
        return (f"challenger {challenger.model_id} at {challenger.traffic_pct:g}% has not been evaluated yet "
                "(the experiments job evaluates it)")
    words = (f"the latest evaluation ({verdict.evaluated_at:%Y-%m-%d %H:%M} UTC, {verdict.step or '?'} step, "
             f"{verdict.challenger_leads} challenger and {verdict.champion_leads} champion leads) says "
             f"{verdict.decision}: {verdict.reason}")
    if verdict.decision == "promote" and verdict.step != "efficacy":
        words += " (at a harm step 'promote' moves the challenger to the next share; a winner is declared " \
                 "only at the 50/50 step)"
    return words


def rollback(actor: Actor, ref: str, family: str | None = None) -> Outcome:
    """Roll back ``ref``: a running challenger is taken off traffic (retired ``rolled_back``; the champion
    serves everything); a former champion becomes champion again (the current one is retired as a
    former champion) when no challenger is running in its family."""
    parameters = {"version": ref, "family": family}

    def body(con: duckdb.DuckDBPyConnection) -> Outcome:
        model = _resolve(con, ref, family)
        if model.role == "challenger":
            wh.retire(con, model.model_id, "rolled_back")
            action, replaced = "challenger rolled back", None
        elif model.role == "retired" and model.ab_group in ("archived", "champion"):
            running = wh.challenger(con, model.family)
            if running is not None:
                raise ControlRefused("conflict", f"{model.family} runs an experiment against its champion "
                                                 f"(challenger {running.model_id} at {running.traffic_pct:g}%): "
                                                 "roll the challenger back first")
            replaced = wh.make_champion(con, model.family, model.model_id)
            action = "former champion restored"
        else:
            why = {"champion": "is the champion: roll back to an earlier version (a retired former champion) to "
                               "replace it",
                   "candidate": "serves no traffic (a candidate): nothing to roll back",
                   "retired": "was never champion (retired as "
                              f"{model.ab_group or 'archived'}): nothing to roll back to",
                   "training": "is still training", "failed": "failed to train"}[model.role]
            raise ControlRefused("conflict", f"{model.model_id} ({model.family} {model.version}) {why}")
        table = _publish_routing(con)
        answer = {"action": action, "model_id": model.model_id, "family": model.family, "version": model.version,
                  "replaced": replaced, **_family_arms(table, model.family)}
        outcome = Outcome(answer, f"{action}: {model.model_id}", model.model_id, model.family)
        outcome.after.append(_alias_sync(con, model.family, answer))
        return outcome

    return _act(actor, "rollback", parameters, body)


def stats(recent_runs: int = 5, recent_actions: int = 10) -> dict[str, Any]:
    """Models by role; per family its champion, challenger and latest verdict; the latest retrain runs;
    the control actions by result and the latest ones."""
    import dagster as dg

    from flywheel_pipeline.instance import ensure_local_dagster_home

    ensure_local_dagster_home()
    with dg.DagsterInstance.get() as instance:
        runs = [{"run_id": r.dagster_run.run_id, "status": r.dagster_run.status.value,
                 "start": _iso(r.start_time), "end": _iso(r.end_time),
                 "launched_by": r.dagster_run.tags.get("flywheel/launched_by")}
                for r in instance.get_run_records(filters=dg.RunsFilter(job_name=RETRAIN_JOB), limit=recent_runs)]
    out: dict[str, Any] = {"models": {}, "families": [], "retrain_runs": runs, "actions": {}, "recent_actions": []}
    if not paths.warehouse_exists():
        return out
    with _warehouse() as con:
        models_ = wh.all_models(con)
        for m in models_:
            out["models"][m.role] = out["models"].get(m.role, 0) + 1
        for name in wh.families(con):
            champion, challenger = wh.champion(con, name), wh.challenger(con, name)
            verdict = wh.latest_verdict(con, name, challenger.model_id) if challenger else None
            out["families"].append({
                "family": name, "champion": champion.model_id if champion else None,
                "champion_version": champion.version if champion else None,
                "challenger": challenger.model_id if challenger else None,
                "challenger_version": challenger.version if challenger else None,
                "challenger_traffic_pct": challenger.traffic_pct if challenger else None,
                "verdict": verdict.as_dict() if verdict else None})
        out["actions"] = audit.counts(con)
        out["recent_actions"] = audit.recent(con, recent_actions)
    return json.loads(json.dumps(out, default=str))
