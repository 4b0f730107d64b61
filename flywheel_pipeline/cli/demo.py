"""``flywheel demo``: the flywheel on the simulated world, in simulated time.

Turn 1 trains on the days up to ``--experiment-weeks`` ago and routes 10% of traffic to its
model, adds the world's prompt template as champion and has the prompt optimizer propose its next
version from what drives replies, routed to 10% as a template challenger; then, week by week, the simulated outreach app sends through routing.json, outcomes
land and are labelled as of that week, and the experiment sensor's run evaluates the
experiment and applies its decision (rollout, promotion, rollback); turn 2 trains again on
everything. The demo remembers how far it got (``$FLYWHEEL_HOME/simulator/demo.json``): an
interrupted demo resumes at its step, a finished one only moves its world forward.

It prints a story (a few lines per simulated week); Dagster's and MLflow's log lines go to
``$FLYWHEEL_HOME/logs/flywheel.log`` unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone

from flywheel_pipeline import paths
from flywheel_pipeline.cli.jobs import (JobRun, run_job, run_learn, run_refresh, say_learning,
                                        tick_experiment_sensor, tick_sensor)
from flywheel_pipeline.cli.options import add_parser, add_verbose, positive_int
from flywheel_pipeline.cli.output import log_file, say
from flywheel_pipeline.cli.simulate import add_world_arguments, cmd_simulate
from flywheel_pipeline.cli.warehouse import cmd_summary

# The demo trains turn 1 on the days before the experiment; fewer than this leaves no mature
# outcomes to train on (14 days of maturity plus a week of sending).
DEMO_MIN_HISTORY_DAYS = 21


@dataclass
class DemoState:
    """How far the demo in this FLYWHEEL_HOME has run (``simulator/demo.json``)."""

    end: date
    weeks: int
    steps_done: int = 0
    complete: bool = False

    @staticmethod
    def path():
        return paths.simulator_dir() / "demo.json"

    @classmethod
    def load(cls) -> DemoState | None:
        path = cls.path()
        if not path.exists():
            return None
        saved = json.loads(path.read_text())
        return cls(date.fromisoformat(saved["end"]), int(saved["weeks"]), int(saved["steps_done"]),
                   bool(saved["complete"]))

    def save(self) -> None:
        from flywheel_pipeline.core.atomic_json import write_json_atomic

        write_json_atomic({**asdict(self), "end": self.end.isoformat()}, self.path())


def _midnight(day: date) -> str:
    return datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc).isoformat()


class Demo:
    """The demo's steps on one world: ``args`` (seed, size) and ``state`` (its end and weeks)."""

    def __init__(self, args: argparse.Namespace, state: DemoState) -> None:
        self.args, self.state, self.verbose = args, state, args.verbose

    @property
    def start_experiment(self) -> date:
        return self.state.end - timedelta(days=7 * self.state.weeks)

    # ---- the steps; each returns False when a run failed ------------------------------------

    def steps(self) -> list[Callable[[], bool]]:
        return [self.turn_1, *(lambda w=w: self.live_week(w) for w in range(1, self.state.weeks + 1)), self.turn_2]

    def turn_1(self) -> bool:
        say(f"\n=== flywheel turn 1: outcomes up to {self.start_experiment} ===")
        self.simulate_until(self.start_experiment, None)
        say("Materializing ingestion and outcome labels through Dagster ...")
        if not self.refresh(self.start_experiment):
            return False
        self.add_template()
        say("Training data, validated exports, fine-tuning (SANDBOX backend), registry, MLflow, routing ...")
        return self.retrain() and self.propose_template()

    def live_week(self, week: int) -> bool:
        week_end = self.start_experiment + timedelta(days=7 * week)
        say(f"\n=== live traffic, week {week} of {self.state.weeks}: up to {week_end} ===")
        self.simulate_until(week_end, week_end - timedelta(days=7))
        return self.refresh(week_end) and self.experiments()

    def turn_2(self) -> bool:
        say(f"\n=== flywheel turn 2: outcomes up to {self.state.end} ===")
        say("Training again on everything that matured: a new dataset version, a new model version ...")
        # then what the daemon would do next: learn, propose the next template, evaluate the experiments
        return self.retrain() and self.learn() and self.propose_template() and self.experiments()

    def move_on(self, to: date) -> bool:
        """A finished demo's world moves forward to ``to``: simulate, refresh, evaluate, retrain."""
        done = self.state.end
        say(f"\n=== the demo world moves on: {done} -> {to} ===")
        self.state.end = to
        self.simulate_until(to, done)
        return (self.refresh(to) and self.experiments() and self.retrain() and self.learn() and self.propose_template()
                and self.experiments())

    # ---- what each step does ------------------------------------------------------------------

    def simulate_until(self, day: date, follow_from: date | None) -> None:
        args = self.args
        cmd_simulate(argparse.Namespace(seed=args.seed, days=args.days - (self.state.end - day).days, end=day,
                                        messages_per_day=args.messages_per_day, leads_per_org=args.leads_per_org,
                                        follow_routing_from=follow_from))

    def refresh(self, day: date) -> bool:
        return bool(run_refresh(as_of=_midnight(day), verbose=self.verbose, name_home=False))

    def retrain(self) -> bool:
        """Retrain as the new-outcomes sensor would request it (tagged as its run, so the daemon does
        not request it again), or as the weekly schedule would when the sensor waits for outcomes."""
        from flywheel_pipeline.defs.training.automation import RETRAIN_JOB_NAME

        _, run = tick_sensor("new_outcomes_sensor", verbose=self.verbose)
        if run is None:
            run = run_job(RETRAIN_JOB_NAME, verbose=self.verbose, name_home=False)
        say_training(run)
        return run.success

    def add_template(self) -> None:
        """The world's outreach app writes with a versioned template: its first version is the champion."""
        from flywheel_pipeline.routing import write_template_families
        from flywheel_pipeline.simulator.world import DEMO_TEMPLATE, DEMO_TEMPLATE_ID
        from flywheel_pipeline.warehouse import templates
        from flywheel_pipeline.warehouse.schema import connect
        from flywheel_pipeline.warehouse.template_routing import build_template_families

        con = connect(paths.warehouse_path())
        try:
            if templates.champion(con, "all") is None:
                added = templates.add_template(con, template_id=DEMO_TEMPLATE_ID, version="1.0.0",
                                               text=DEMO_TEMPLATE, source="demo")
                say(f"Prompt template {added.template.key} added: {added.deployment}")
            families, _ = build_template_families(con)
        finally:
            con.close()
        write_template_families(families)

    def propose_template(self) -> bool:
        """The prompt optimizer, as `flywheel templates propose` runs it: what drives replies, then the
        champion template's next version from that guidance, routed only as a challenger."""
        from flywheel_pipeline.cli.templates import say_proposal
        from flywheel_pipeline.defs.experiments.templates import PROPOSE_JOB_NAME

        say("Prompt optimizer: what drives replies so far, and a template challenger from it ...")
        run = run_job(PROPOSE_JOB_NAME, verbose=self.verbose, name_home=False)
        say_proposal(run.metadata.get("prompt_optimizer") or {})
        return run.success

    def learn(self) -> bool:
        say("Learning without training: judging every sent message, what drives outcomes, the cost per outcome ...")
        run = run_learn(verbose=self.verbose, name_home=False)
        say_learning(run)
        return run.success

    def experiments(self) -> bool:
        run = tick_experiment_sensor(verbose=self.verbose)
        if run is None:
            return True
        if run.success:
            say_experiments()
        return run.success


def say_training(run: JobRun) -> None:
    """What a retrain run produced: the model (a SANDBOX one named as such) and its offline
    evaluation (a SANDBOX generator's result explained)."""
    model = run.metadata.get("fine_tuned_model") or {}
    if model.get("model_id"):
        sandbox = "SANDBOX" in str(model.get("backend", ""))
        say(f"  model {model['model_id']}: {model.get('family')} v{model.get('version')}, "
            f"dataset {model.get('dataset_version')}")
        if sandbox:
            say("    SANDBOX backend: nothing was trained, the id names base model, method and dataset (the simulated "
                "recipients are told to like its e-mails a little more than the base model's)")
    evaluation = run.metadata.get("offline_evaluation") or {}
    if evaluation.get("prompts"):
        say(f"  offline evaluation against {evaluation.get('champion')} on {evaluation['prompts']} held-out prompts: "
            f"{evaluation.get('wins')} won, {evaluation.get('losses')} lost, {evaluation.get('ties')} tied")
        if evaluation.get("decided_by"):
            say(f"    gate decided by {evaluation['decided_by']}: {evaluation.get('gate_reason', '')}")
        if "SANDBOX" in str(evaluation.get("generator", "")):
            say("    SANDBOX generator: the new model answers with e-mails from its own training file, the other "
                "with one fixed generic text, so the new model wins nearly every pair; this shows the evaluation "
                "runs, not that the model is better (the A/B test decides)")


def say_experiments() -> None:
    """The latest A/B evaluation of each family, and the registry's live models."""
    from flywheel_pipeline.warehouse.schema import open_configured

    con = open_configured(read_only=True)
    try:
        for family, challenger, step, leads_c, leads_p, decision, reason in con.execute("""
                SELECT family, challenger, step, challenger_leads, champion_leads, decision, reason
                FROM ab_test_results
                WHERE evaluated_at = (SELECT max(evaluated_at) FROM ab_test_results)  -- this run's experiments
                QUALIFY row_number() OVER (PARTITION BY family, arm, evaluated_at) = 1
                ORDER BY family, arm""").fetchall():
            say(f"  {family}: challenger {challenger}, {step} step ({leads_c} mature leads vs {leads_p}): "
                f"{decision.upper()} - {reason}")
        for model, version, status, pct in con.execute(
                "SELECT model_id, version, status, traffic_pct FROM model_registry "
                "WHERE status IN ('ready', 'deployed', 'archived') ORDER BY created_at").fetchall():
            say(f"  registry: {model} v{version}: {status}, {pct:g}% of traffic")
        for template, version, status, group, pct in con.execute("""
                SELECT template_id, version, status, ab_group,
                       CASE WHEN status = 'deployed' THEN 100 - coalesce((
                           SELECT sum(c.traffic_pct) FROM template_deployments c WHERE c.task_type = d.task_type
                           AND c.status = 'ready' AND c.ab_group = 'challenger'), 0) ELSE traffic_pct END
                FROM template_deployments d WHERE status <> 'draft' ORDER BY version""").fetchall():
            say(f"  template: {template}@{version}: {status} ({group}), {pct:g}% of traffic")
    finally:
        con.close()


def _plan(args: argparse.Namespace) -> DemoState | int:
    """The demo state to run (a new one, or the one this FLYWHEEL_HOME remembers), or an exit status."""
    end = args.end or datetime.now(timezone.utc).date()
    if args.days < DEMO_MIN_HISTORY_DAYS + 7:
        print(f"flywheel demo: --days {args.days} is too short: the demo needs {DEMO_MIN_HISTORY_DAYS} days "
              f"of history to train on and at least one week of live traffic ({DEMO_MIN_HISTORY_DAYS + 7} days)",
              file=sys.stderr)
        return 2
    weeks = min(args.experiment_weeks, (args.days - DEMO_MIN_HISTORY_DAYS) // 7)
    state = DemoState.load()
    if state is None:
        if weeks < args.experiment_weeks:
            say(f"--experiment-weeks {args.experiment_weeks} shortened to {weeks}: --days {args.days} leaves "
                f"{DEMO_MIN_HISTORY_DAYS} days of history to train on and {weeks} weeks of live traffic")
        return DemoState(end, weeks)
    if not state.complete:  # an interrupted demo resumes where it stopped, on its own dates
        say(f"Resuming the demo that stopped after step {state.steps_done} of {state.weeks + 2} "
            f"(world up to {state.end}).")
    return state


def _say_next() -> None:
    bin_dir = os.path.dirname(sys.executable)  # this environment's commands, activated or not
    say()
    say("Next: open the Dagster UI on this instance with")
    say(f"  FLYWHEEL_HOME={paths.flywheel_home()} {os.path.join(bin_dir, 'flywheel')} ui")
    say("  (or `make ui`), then browse Assets for metadata and checks; and the MLflow UI with")
    say(f"  {os.path.join(bin_dir, 'mlflow')} ui --backend-store-uri sqlite:///{paths.mlflow_db_path()}")


def cmd_demo(args: argparse.Namespace) -> int:
    say(f"FLYWHEEL_HOME={paths.flywheel_home()}")
    state = _plan(args)
    if isinstance(state, int):
        return state
    if not args.verbose:
        say(f"Dagster runs are recorded in DAGSTER_HOME={paths.dagster_home()}; their log lines and MLflow's go "
            f"to {log_file()} (--verbose shows them here)")
    demo = Demo(args, state)
    if state.complete:
        # the world only moves forward (simulated time cannot be replayed over a warehouse that
        # has seen the future)
        end = args.end or datetime.now(timezone.utc).date()
        if state.end >= end:
            say(f"The demo world in this FLYWHEEL_HOME already runs up to {state.end}; nothing to add "
                "(use a new FLYWHEEL_HOME, or `make clean`, to start over).")
            return cmd_summary(args)
        if not demo.move_on(end):
            return 1
        state.save()
        return cmd_summary(args)
    steps = demo.steps()
    for number, step in enumerate(steps, 1):
        if number <= state.steps_done:
            continue
        if not step():
            return 1
        state.steps_done, state.complete = number, number == len(steps)
        state.save()
    cmd_summary(args)
    _say_next()
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "demo", help="turn the flywheel on a simulated world: train, A/B test week by week, "
                                     "train again")
    add_world_arguments(p)
    p.add_argument("--experiment-weeks", type=positive_int, default=8,
                   help="simulated weeks of live A/B traffic between the two training turns")
    add_verbose(p)
    p.set_defaults(func=cmd_demo)
