"""The Dagster layer on a real instance: materialize, checks, sensor ticks, schedule, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.simulator import SimConfig, simulate
from flywheel_pipeline.definitions import build_definitions
from flywheel_pipeline.defs.ingest.automation import daily_refresh_schedule, landing_sensor
from flywheel_pipeline.defs.resources import LabelPolicyResource, LandingZoneResource, WarehouseResource
from flywheel_pipeline_tests.domains import assets_of
from flywheel_pipeline_tests.conftest import REPO

AS_OF = "2026-05-01T00:00:00Z"


def small_world(landing: Path, days: int = 20, end: date = date(2026, 5, 1)):
    return simulate(landing, SimConfig(seed=3, days=days, end=end, organizations=2, leads_per_org=100,
                                       messages_per_day=20))


def resources(tmp_path: Path) -> dict:
    return {"warehouse": WarehouseResource(database=str(tmp_path / "wh.duckdb")),
            "landing": LandingZoneResource(path=str(tmp_path / "landing")),
            "label_policy": LabelPolicyResource()}


def materialize_all(tmp_path, instance, **config):
    return dg.materialize(
        assets_of("ingest", "outcomes"), instance=instance, resources=resources(tmp_path),
        run_config={"ops": {"outcome_labels": {"config": {"as_of": AS_OF, **config}}}})


def materialization(result, key: str):
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    assert len(events) == 1, key
    return events[0].materialization.metadata


def test_materialize_everything_into_a_temporary_warehouse_and_instance(tmp_path):
    small_world(tmp_path / "landing")
    with dg.instance_for_test() as instance:
        result = materialize_all(tmp_path, instance)
        assert result.success
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks == {"one_label_per_message": True, "quality_score_in_range": True,
                          "funnel_flags_consistent": True, "maturity_consistent": True,
                          "quarantine_rate": True, "email_events_reference_messages": True}
        meta = materialization(result, "outcome_labels")
        assert meta["dagster/row_count"].value == 400
        assert meta["mode"].value == "full relabel"
        assert 0 < meta["mature_labels"].value < 400
        for key in ("deepest_stage_counts", "quality_score_distribution", "funnel_flags", "per_model_mature"):
            assert meta[key].value.strip(), key
        events_meta = materialization(result, "email_events")
        assert events_meta["duplicates_skipped"].value > events_meta["rows_accepted"].value  # ~3 copies each
        # the materializations are recorded in the instance
        assert instance.get_latest_materialization_event(dg.AssetKey("outcome_labels")) is not None

        # a new simulated day lands: the next run is incremental and touches only new work
        small_world(tmp_path / "landing", days=21, end=date(2026, 5, 2))
        again = materialize_all(tmp_path, instance)
        assert again.success
        meta2 = materialization(again, "outcome_labels")
        assert meta2["mode"].value == "incremental"
        assert meta2["dagster/row_count"].value == 420
        assert 20 <= meta2["messages_relabelled"].value < 120
        assert materialization(again, "messages")["files_ingested"].value == 1

    con = duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM outcome_labels").fetchone()[0] == 420
    con.close()


def test_a_broken_contract_fails_the_blocking_check_and_the_run(tmp_path):
    small_world(tmp_path / "landing", days=5)
    with dg.instance_for_test() as instance:
        assert materialize_all(tmp_path, instance).success
        con = duckdb.connect(str(tmp_path / "wh.duckdb"))
        con.execute("INSERT INTO packed_labels SELECT * FROM packed_labels LIMIT 1")
        con.close()
        result = dg.materialize(assets_of("ingest", "outcomes"), instance=instance,
                                resources=resources(tmp_path), raise_on_error=False)
        assert not result.success
        failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
        assert "one_label_per_message" in failed


def test_a_landing_file_refused_whole_warns_in_the_quarantine_check(tmp_path):
    from flywheel_pipeline.warehouse.ingest import MAX_FILE_BYTES

    small_world(tmp_path / "landing", days=5)
    with open(tmp_path / "landing" / "sendgrid" / "backfill.jsonl", "wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: too large for DuckDB to read in one piece
    with dg.instance_for_test() as instance:
        result = materialize_all(tmp_path, instance)
        assert result.success  # a warning: the rest of the landing zone is ingested and labelled
        [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == "quarantine_rate"]
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
        assert check.metadata["files_refused"].value == ["sendgrid/backfill.jsonl"]
        assert materialization(result, "email_events")["quarantine_reasons"].value["file too large to read"] == 1
        assert materialization(result, "outcome_labels")["dagster/row_count"].value == 100


def test_landing_sensor_requests_a_run_only_for_new_files(tmp_path):
    landing = tmp_path / "landing"
    res = {"landing": LandingZoneResource(path=str(landing)),
           "warehouse": WarehouseResource(database=str(tmp_path / "wh.duckdb"))}
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources=res)
        assert isinstance(landing_sensor(ctx), dg.SkipReason)  # nothing landed yet

        write_jsonl(landing, "sendgrid", [{"sg_event_id": "a"}])
        ctx = dg.build_sensor_context(instance=instance, resources=res, cursor=None)
        first = landing_sensor(ctx)
        assert isinstance(first, dg.RunRequest)
        assert first.tags["flywheel/sources"] == "sendgrid"
        cursor = ctx.cursor
        assert json.loads(cursor)["sendgrid"].startswith("1:")

        ctx = dg.build_sensor_context(instance=instance, resources=res, cursor=cursor)
        assert isinstance(landing_sensor(ctx), dg.SkipReason)

        (landing / "crm").mkdir()
        (landing / "crm" / ".half-written.jsonl.tmp").write_text("{")  # invisible until renamed
        ctx = dg.build_sensor_context(instance=instance, resources=res, cursor=cursor)
        assert isinstance(landing_sensor(ctx), dg.SkipReason)

        write_jsonl(landing, "crm", [{"event_id": "c"}])
        write_jsonl(landing, "messages", [{"message_id": "m"}])
        ctx = dg.build_sensor_context(instance=instance, resources=res, cursor=cursor)
        second = landing_sensor(ctx)
        assert isinstance(second, dg.RunRequest)
        assert second.tags["flywheel/sources"] == "crm,messages"
        assert second.run_key != first.run_key


def test_landing_sensor_tick_through_definitions_targets_the_refresh_job(tmp_path, home):
    write_jsonl(home / "landing", "messages", [{"message_id": "m"}])
    defs = build_definitions()
    sensor = defs.resolve_sensor_def("landing_sensor")
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources=defs.resources)
        data = sensor.evaluate_tick(ctx)
        assert len(data.run_requests) == 1
        assert sensor.job_name == "refresh"
        assert data.cursor


def test_daily_schedule_targets_the_refresh_job():
    with dg.instance_for_test() as instance:
        ctx = dg.build_schedule_context(instance=instance)
        data = daily_refresh_schedule.evaluate_tick(ctx)
        assert len(data.run_requests) == 1
        assert daily_refresh_schedule.job_name == "refresh"
        assert daily_refresh_schedule.cron_schedule == "0 3 * * *"


def test_definitions_bind_resources_by_environment(home, monkeypatch):
    local = build_definitions("local")
    assert local.resources["warehouse"].database == str(home / "warehouse.duckdb")
    with pytest.raises(ValueError, match="FLYWHEEL_ENV"):
        build_definitions("staging")
    # production takes every location from paths.py: one setting each, shared with the service
    monkeypatch.setenv("FLYWHEEL_LANDING", str(home / "elsewhere" / "landing"))
    monkeypatch.setenv("FLYWHEEL_WAREHOUSE", str(home / "elsewhere" / "wh.duckdb"))
    prod = build_definitions("production")
    assert prod.resources["warehouse"].database == str(home / "elsewhere" / "wh.duckdb")
    assert prod.resources["landing"].path == str(home / "elsewhere" / "landing")
    from flywheel_pipeline.service.settings import ServiceSettings

    assert ServiceSettings.from_env().landing == str(home / "elsewhere" / "landing")


def _cli(args, env):
    return subprocess.run([sys.executable, "-m", "flywheel_pipeline.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_cli_refresh_records_runs_in_dagster_home_and_fails_when_a_run_fails(home):
    small_world(home / "landing", days=5)
    env = dict(os.environ)
    ok = _cli(["refresh", "--as-of", AS_OF], env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "succeeded" in ok.stdout
    # Dagster's log lines go to the log file, not the terminal
    assert " - dagster - " not in ok.stdout + ok.stderr
    assert f"go to {home}/logs/flywheel.log (--verbose shows them here)" in ok.stdout
    assert " - dagster - INFO - refresh - " in (home / "logs" / "flywheel.log").read_text()
    assert (home / "dagster" / "dagster.yaml").exists()
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = instance.get_runs()
        assert [r.job_name for r in runs] == ["refresh"]
        assert runs[0].status == dg.DagsterRunStatus.SUCCESS
    summary = _cli(["summary"], env)
    assert summary.returncode == 0 and "outcome labels: 100" in summary.stdout

    con = duckdb.connect(str(home / "warehouse.duckdb"))
    con.execute("UPDATE packed_labels SET quality_score = 1.5 WHERE message_key = "
                "(SELECT min(message_key) FROM packed_labels)")
    con.close()
    bad = _cli(["refresh", "--as-of", AS_OF], env)
    assert bad.returncode == 1
    assert "FAILED" in bad.stdout
    # and why, in the check's own figures
    assert "check quality_score_in_range on outcome_labels did not pass (ERROR): out_of_range=1, min=" in bad.stdout
    assert f"(Dagster's log of the run: {home}/logs/flywheel.log)" in bad.stdout
    verbose = _cli(["refresh", "--as-of", AS_OF, "--verbose"], env)
    assert verbose.returncode == 1 and " - dagster - ERROR - refresh - " in verbose.stderr
    assert "flywheel.log" not in verbose.stdout


def test_cli_learn_runs_the_learn_job_after_labels_as_of_a_time(home):
    small_world(home / "landing", days=5)
    env = dict(os.environ)
    learned = _cli(["learn", "--as-of", AS_OF], env)
    assert learned.returncode == 0, learned.stdout[-3000:] + learned.stderr[-3000:]
    assert "of job refresh (succeeded)" in learned.stdout and "of job learn (succeeded)" in learned.stdout
    assert "judged" in learned.stdout and "messages now" in learned.stdout
    assert "judge calibration:" in learned.stdout and "rows trusted" in learned.stdout
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        # newest first: labels back to now, the learn run, the labels as of AS_OF
        assert [r.job_name for r in instance.get_runs()] == ["refresh", "learn", "refresh"]
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    judged, delivered = con.execute("SELECT (SELECT count(*) FROM message_judgements), "
                                    "(SELECT count(*) FROM message_labels WHERE delivered)").fetchone()
    calibrated = con.execute("SELECT count(DISTINCT metric) FROM judge_calibration").fetchone()[0]
    as_of = [r[0] for r in con.execute("SELECT as_of FROM label_runs ORDER BY label_run_id").fetchall()]
    con.close()
    assert judged == delivered > 0
    # learned as of AS_OF, then the labels back to now (maturity against the current time)
    assert as_of[-2] == datetime.fromisoformat(AS_OF).replace(tzinfo=None) < as_of[-1]
    assert calibrated in (0, 3)  # a 5-day world may have no mature message yet; its rows carry all 3 metrics


def test_dagster_cli_materializes_from_the_module(home):
    small_world(home / "landing", days=2)
    env = dict(os.environ)
    os.makedirs(env["DAGSTER_HOME"], exist_ok=True)
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "dagster"), "asset", "materialize",
                           "-m", "flywheel_pipeline.definitions", "--select", "messages"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM messages").fetchone()[0] == 40
    con.close()


@pytest.mark.parametrize("argv, message", [
    (["demo", "--end", "garbage"], "argument --end: not an ISO date (YYYY-MM-DD): 'garbage'"),
    (["simulate", "--end", "2026-13-01"], "argument --end: not an ISO date"),
    (["simulate", "--days", "-3"], "argument --days: must be at least 1, got -3"),
    (["simulate", "--follow-routing-from", "soon"], "argument --follow-routing-from: not an ISO date"),
    (["demo", "--experiment-weeks", "0"], "argument --experiment-weeks: must be at least 1, got 0"),
    (["refresh", "--as-of", "yesterday"], "argument --as-of: as_of must be an ISO 8601 time"),
])
def test_cli_refuses_bad_arguments_before_doing_anything(home, capsys, argv, message):
    from flywheel_pipeline.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not home.exists()  # nothing simulated, no instance, no warehouse


def test_cli_demo_refuses_a_world_too_short_to_train_on(home, capsys):
    from flywheel_pipeline.cli import main

    assert main(["demo", "--days", "27", "--end", "2026-06-01"]) == 2
    assert "--days 27 is too short" in capsys.readouterr().err
    assert not (home / "landing").exists()


def test_dg_lists_the_definitions_once_dagster_home_is_set(home):
    """The README's `dg list defs`: with DAGSTER_HOME on the local instance it lists the code
    location; without it Dagster reads the top-level (production, PostgreSQL) dagster.yaml
    and stops with one line naming the missing DAGSTER_PG_* variables."""
    dg_cli = os.path.join(os.path.dirname(sys.executable), "dg")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PG_")}
    os.makedirs(env["DAGSTER_HOME"], exist_ok=True)
    listed = subprocess.run([dg_cli, "list", "defs", "--json"], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    defs = json.loads(listed.stdout)
    asset_keys = {a["asset_key"] for a in defs["assets"]}
    assert {"messages", "email_events", "outcome_labels", "model_leaderboard"} <= asset_keys
    assert {j["name"] for j in defs["jobs"]} == {"refresh", "datasets", "retrain", "experiments", "learn",
                                                 "propose_templates", "maintenance"}
    assert {"landing_sensor", "experiment_sensor"} <= {s["name"] for s in defs["sensors"]}

    del env["DAGSTER_HOME"]
    production = subprocess.run([dg_cli, "list", "defs", "--json"], env=env, cwd=REPO, capture_output=True,
                                text=True, timeout=300)
    assert production.returncode != 0
    said = production.stdout + production.stderr
    # one line that says what to set, not a traceback
    assert "DAGSTER_PG_USER" in said and "is the production instance" in said and "Traceback" not in said


def _after_the_demo() -> tuple[dict[str, str], dict[str, str]]:
    """What a first `make ui` would find on the demo's instance: every asset that is not fresh
    (Dagster's own staleness: missing, or an upstream materialized since), and every sensor that
    starts running and would launch a run the daemon has not seen (a run request whose run key no
    run of that sensor carries yet)."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._time import get_current_datetime

    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    would_launch = {}
    with dg.DagsterInstance.get() as instance:
        view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
                              instance=instance, asset_graph=graph)
        resolver = CachingStaleStatusResolver(instance, graph, view)
        not_fresh = {key.to_user_string(): resolver.get_status(key).value for key in graph.materializable_asset_keys
                     if resolver.get_status(key).value != "FRESH"}
        for sensor in defs.get_repository_def().sensor_defs:
            if sensor.default_status != dg.DefaultSensorStatus.RUNNING or isinstance(sensor, dg.RunStatusSensorDefinition):
                continue  # (a run-status sensor reacts to runs, it launches none)
            tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=defs.resources,
                                                                sensor_name=sensor.name))
            for request in tick.run_requests or []:
                seen = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": request.run_key,
                                                                     "dagster/sensor_name": sensor.name}))
                if not seen:
                    would_launch[sensor.name] = request.run_key
    return not_fresh, would_launch


def test_cli_demo_runs_in_simulated_time_and_only_moves_the_world_forward(home):
    """A small demo: turn 1, two weeks of live routed traffic with the experiment sensor's runs,
    turn 2; run again the same day it adds nothing; a week later it extends the same world."""
    env = dict(os.environ)
    small = ["--days", "35", "--experiment-weeks", "2", "--messages-per-day", "60", "--leads-per-org", "150"]
    first = _cli(["demo", *small, "--end", "2026-06-01"], env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    assert "live traffic, week 2 of 2" in out and out.count("experiment sensor requested a run") == 3
    assert "challenger 10%" in out and "flywheel turn 2" in out
    # the prompt template story: the world's template is the champion, the optimizer runs after each
    # training turn from the drivers, and what it proposes is tested as a 10% template challenger
    assert "Prompt template outreach-email@1.0.0 added: champion" in out and out.count("prompt optimizer: ") == 2
    assert "prompt optimizer: proposed outreach-email@1.1.0 from champion outreach-email@1.0.0" in out
    assert "templates-global-all: challenger outreach-email@1.1.0" in out
    assert "template: outreach-email@1.1.0: ready (challenger), 10% of traffic" in out
    not_fresh, would_launch = _after_the_demo()
    assert not_fresh == {} and would_launch == {}, (not_fresh, would_launch)
    # a story, not a log: Dagster's and MLflow's lines are in the log file it names
    assert " - dagster - " not in out + first.stderr and "registered model" not in out + first.stderr
    assert f"go to {home}/logs/flywheel.log (--verbose shows them here)" in out
    log = (home / "logs" / "flywheel.log").read_text()
    assert " - dagster - INFO - retrain - " in log and "Successfully registered model 'flywheel-global-all'" in log
    assert out.count("SANDBOX backend: nothing was trained") == 2 and out.count("SANDBOX generator: ") == 2
    bin_dir = os.path.dirname(sys.executable)  # the UIs it points to are this environment's, PATH or not
    assert f"FLYWHEEL_HOME={home} {bin_dir}/flywheel ui" in out
    assert f"{bin_dir}/mlflow ui --backend-store-uri sqlite:///{home}/mlflow.db" in out
    assert os.access(f"{bin_dir}/flywheel", os.X_OK) and os.access(f"{bin_dir}/mlflow", os.X_OK)
    history = json.loads((home / "simulator" / "routing_history.json").read_text())
    assert history[0][0] == "2026-05-18"  # routed from turn 1's end, two weeks before the end
    messages = [json.loads(line) for f in sorted((home / "landing" / "messages").glob("*2026-05-2*.jsonl"))
                for line in f.read_text().splitlines()]
    assert {m["metadata"].get("allocation", "").split("@")[-1] for m in messages} >= {"challenger=10/champion=90"}
    again = _cli(["demo", *small, "--end", "2026-06-01"], env)
    assert again.returncode == 0 and "already runs up to 2026-06-01" in again.stdout
    later = _cli(["demo", *small, "--end", "2026-06-08"], env)
    assert later.returncode == 0, later.stdout[-3000:]
    assert "moves on: 2026-06-01 -> 2026-06-08" in later.stdout
    assert (home / "landing" / "messages" / "sim-7-messages-2026-06-07.jsonl").exists()
    assert json.loads((home / "simulator" / "demo.json").read_text()) == {
        "end": "2026-06-08", "weeks": 2, "steps_done": 4, "complete": True}


def test_cli_demo_resumes_after_an_interruption(home):
    """A demo cut off after turn 1 resumes with its own dates instead of replaying turn 1."""
    env = dict(os.environ)
    small = ["--days", "35", "--experiment-weeks", "1", "--messages-per-day", "40", "--leads-per-org", "100"]
    (home / "simulator").mkdir(parents=True)
    first = _cli(["demo", *small, "--end", "2026-06-01"], env)
    assert first.returncode == 0
    state = json.loads((home / "simulator" / "demo.json").read_text())
    assert state == {"end": "2026-06-01", "weeks": 1, "steps_done": 3, "complete": True}
    # pretend it stopped after turn 1: the next run (another day) picks up at week 1 of that world
    (home / "simulator" / "demo.json").write_text(json.dumps({**state, "steps_done": 1, "complete": False}))
    resumed = _cli(["demo", *small, "--end", "2026-07-01", "--verbose"], env)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    # --verbose: Dagster's log lines on the terminal again (stderr), the story on stdout
    assert " - dagster - INFO - refresh - " in resumed.stderr and " - dagster - " not in resumed.stdout
    assert "flywheel.log" not in resumed.stdout
    assert "Resuming the demo that stopped after step 1 of 3 (world up to 2026-06-01)" in resumed.stdout
    assert "flywheel turn 1" not in resumed.stdout and "live traffic, week 1 of 1: up to 2026-06-01" in resumed.stdout
    assert json.loads((home / "simulator" / "demo.json").read_text())["complete"] is True
