"""The control API (/training/*) over real HTTP on 127.0.0.1 and the same actions from the CLI: only
admin keys (an organization's key 403, none 401); a retrain launched over HTTP is a real Dagster run
in the project's instance that finishes (sandbox fine-tuning), with its steps and the model it
produced; a second one while it runs is 409 with its run id; deploy, promote-winner and rollback
change the registry and routing.json (sticky arms at the deployed share), promote-winner follows the
statistics engine's verdict (409 without a significant winner, forced only with a reason); every
action is in control_audit, never a key."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections import Counter
from datetime import date, datetime

import dagster as dg
import httpx
import pytest

from flywheel_pipeline import paths
from flywheel_pipeline.cli import main as flywheel
from flywheel_pipeline.core.stats.policy import PolicyConfig, decide
from flywheel_pipeline.core.stats.sufficient import ArmStats
from flywheel_pipeline.routing import choose_model, load_routing
from flywheel_pipeline.service.app import create_app
from flywheel_pipeline.service.settings import ServiceSettings, parse_admin_keys
from flywheel_pipeline.simulator import SimConfig, simulate
from flywheel_pipeline.warehouse import model_registry as registry
from flywheel_pipeline.warehouse.experiments import record_decision
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.fakes.http import serve_app
from flywheel_pipeline_tests.service.test_service import KEYS, metric

ADMIN = "ops-0123456789abcdef"
BARE = "bare-key-fedcba9876543210"
ADMIN_KEYS = f"ops={ADMIN},{BARE}"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
AS_ORG = {"Authorization": "Bearer key-one"}
FAMILY = "flywheel-global-all"


def app_for(home):
    return create_app(ServiceSettings.from_env({"FLYWHEEL_HOME": str(home), "FLYWHEEL_API_KEYS": KEYS,
                                                "FLYWHEEL_ADMIN_KEYS": ADMIN_KEYS}))


def audit_rows(where: str = "TRUE") -> list[dict]:
    con = connect(paths.warehouse_path(), read_only=True)
    try:
        cursor = con.execute(f"SELECT * FROM control_audit WHERE {where} ORDER BY acted_at")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        con.close()


def test_admin_keys_are_parsed_and_kept_apart_from_organization_keys():
    keys = parse_admin_keys(f"ops={ADMIN}, {BARE},padded==key-0123456789abcd==")
    assert set(keys) == {"ops", f"key-{hashlib.sha256(BARE.encode()).hexdigest()[:16]}", "padded"}
    assert keys["padded"].get_secret_value() == "=key-0123456789abcd=="
    padded = "abcdefghijklmnopqrst=="  # base64 padding is a bare key, not "id=key"
    assert {k: v.get_secret_value() for k, v in parse_admin_keys(padded).items()} == {
        f"key-{hashlib.sha256(padded.encode()).hexdigest()[:16]}": padded}
    for bad, why in (("ops=short", "at least 16"), (f"a={ADMIN},a={BARE}", "twice"), (f"a={ADMIN},b={ADMIN}", "twice")):
        with pytest.raises(ValueError, match=why):
            parse_admin_keys(bad)
    with pytest.raises(ValueError, match="also an organization's key"):
        ServiceSettings.from_env({"FLYWHEEL_HOME": "/tmp/x", "FLYWHEEL_API_KEYS": f"org-1={ADMIN}",
                                  "FLYWHEEL_ADMIN_KEYS": ADMIN})


# ---- a registry with a champion and two candidates; verdicts from the statistics engine ----------

def _registry(con) -> None:
    for model_id, version, dataset in (("m-champ", "1.0.0", "d1"), ("m-new", "1.1.0", "d2"),
                                       ("m-other", "1.2.0", "d3")):
        registry.register(con, model_id=model_id, organization_id=None, task_type="all", base_model="gpt-4o-mini",
                          backend="sandbox", method="supervised", job_id=None, job_key=None, dataset_version=dataset,
                          stats={"examples": 100, "positives": 40}, hyperparameters={}, trained_tokens=None,
                          version_override=version)
    registry.set_status(con, "m-champ", "deployed", traffic_pct=100.0, ab_group="champion")


def _verdict(con, champion_rate: float, challenger_rate: float, weights: dict[str, float], leads: int) -> str:
    """Evaluate an experiment with the engine (decide) on per-lead outcomes at these rates and record
    the verdict as ab_test_results does; returns the verdict."""
    n = {arm: int(leads * share / 100) for arm, share in weights.items()}
    rate = {"champion": champion_rate, "challenger": challenger_rate}
    stats = {"weighted_score": {arm: ArmStats.proportion(n[arm], round(n[arm] * rate[arm])) for arm in n},
             "unsubscribe_rate": {arm: ArmStats.proportion(n[arm], round(n[arm] * 0.01)) for arm in n}}
    decision = decide(stats, weights, PolicyConfig(n_star=leads))
    table = load_routing()
    record_decision(con, evaluated_at=datetime.now(), family=FAMILY,
                    experiment_id=table["families"][FAMILY]["experiment_id"],
                    arms={"champion": "m-champ", "challenger": "m-new"}, decision=decision, planned_leads=leads)
    return decision.arms["challenger"]


def test_deploy_promote_rollback_over_http_change_routing_and_are_audited(home):
    con = connect(paths.warehouse_path())
    _registry(con)
    con.close()
    with serve_app(app_for(home)) as base, httpx.Client(base_url=base, headers=AS_ADMIN, timeout=120) as http:
        # who may: admin keys only
        assert http.post("/training/deploy/1.1.0", json={"traffic_pct": 20}, headers={"Authorization": ""}
                         ).status_code == 401
        r = http.post("/training/deploy/1.1.0", json={"traffic_pct": 20}, headers=AS_ORG)
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        assert http.get("/training/stats", headers={"Authorization": "Bearer not-a-key-at-all-000"}).status_code == 401
        assert not paths.routing_path().exists() and audit_rows() == []  # refused before anything happened
        # bad input
        for body, want in (({"traffic_pct": 60}, 422), ({"traffic_pct": 0}, 422), ({"traffic_pct": -5}, 422),
                           ({"traffic_pct": "20"}, 422), ({"traffic_pct": True}, 422), ({}, 422),
                           ({"traffic_pct": 20, "extra": 1}, 422)):
            r = http.post("/training/deploy/1.1.0", json=body)
            assert r.status_code == want and r.json()["error"] == "invalid_request", (body, r.text)
        assert "outside (0, 50]" in http.post("/training/deploy/1.1.0", json={"traffic_pct": 50.5}).json()["detail"]
        r = http.post("/training/deploy/1.1.0", content=b'{"traffic_pct": NaN}')  # bodies are strict JSON
        assert r.status_code == 400 and r.json()["error"] == "invalid_number"
        r = http.post("/training/promote-winner", json={"force": "yes"})
        assert r.status_code == 422 and "force" in r.json()["detail"]
        r = http.post("/training/deploy/9.9.9", json={"traffic_pct": 20})
        assert r.status_code == 404 and "9.9.9" in r.json()["detail"]
        r = http.post("/training/deploy/1.0.0", json={"traffic_pct": 20})
        assert r.status_code == 409 and "champion" in r.json()["detail"]
        # no experiment yet: nothing to promote
        r = http.post("/training/promote-winner")
        assert r.status_code == 409 and "no experiment is running" in r.json()["detail"]

        r = http.post("/training/deploy/1.1.0", json={"traffic_pct": 20})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["model_id"] == "m-new" and answer["traffic_pct"] == 20 and answer["audit_id"]
        table = load_routing()
        arms = {a["ab_group"]: (a["model_id"], a["traffic_pct"]) for a in table["families"][FAMILY]["arms"]}
        assert arms == {"challenger": ("m-new", 20.0), "champion": ("m-champ", 80.0)}
        assert answer["experiment_id"] == table["families"][FAMILY]["experiment_id"]
        # a new experiment arm with sticky assignment at that share
        chosen = {f"lead-{i}": choose_model(f"lead-{i}", None)["model_id"] for i in range(4000)}
        assert 700 <= Counter(chosen.values())["m-new"] <= 900
        assert all(choose_model(lead, None)["model_id"] == model for lead, model in list(chosen.items())[:300])
        r = http.post("/training/deploy/1.2.0", json={"traffic_pct": 10})
        assert r.status_code == 409 and "already runs an experiment" in r.json()["detail"]
        models = http.get("/training/models", params={"status": "challenger,champion"}).json()["models"]
        assert {(m["model_id"], m["status"]) for m in models} == {("m-new", "challenger"), ("m-champ", "champion")}
        assert http.get("/training/models", params={"status": "winner"}).status_code == 422

        # promote-winner follows the statistics
        r = http.post("/training/promote-winner")
        assert r.status_code == 409 and "has not been evaluated yet" in r.json()["detail"]
        con = connect(paths.warehouse_path())
        harm = _verdict(con, 0.20, 0.30, {"champion": 80.0, "challenger": 20.0}, 6000)
        con.close()
        r = http.post("/training/promote-winner", json={"family": FAMILY})
        assert harm == "promote" and r.status_code == 409, r.text
        assert "a winner is declared only at the 50/50 step" in r.json()["detail"]
        con = connect(paths.warehouse_path())  # the experiments job moved it to 50/50; no difference there
        registry.set_status(con, "m-new", "ready", traffic_pct=50.0)
        flat = _verdict(con, 0.20, 0.20, {"champion": 50.0, "challenger": 50.0}, 6000)
        con.close()
        r = http.post("/training/promote-winner")
        assert flat == "inconclusive" and r.status_code == 409 and "no significant winner" in r.json()["detail"]
        assert "without a significant difference" in r.json()["detail"]
        r = http.post("/training/promote-winner", json={"force": True})
        assert r.status_code == 422 and "force needs a reason" in r.json()["detail"]
        con = connect(paths.warehouse_path())
        better = _verdict(con, 0.20, 0.26, {"champion": 50.0, "challenger": 50.0}, 6000)
        con.close()
        r = http.post("/training/promote-winner")
        assert better == "promote" and r.status_code == 200, r.text
        assert r.json()["replaced"] == "m-champ" and "significantly higher" in r.json()["statistics"]
        arms = {a["ab_group"]: (a["model_id"], a["traffic_pct"]) for a in load_routing()["families"][FAMILY]["arms"]}
        assert arms == {"champion": ("m-new", 100.0)}

        # rollback: a challenger off traffic; a former champion back; the champion itself refused
        assert http.post("/training/deploy/m-other", json={"traffic_pct": 10}).status_code == 200
        r = http.post("/training/rollback/m-champ")
        assert r.status_code == 409 and "roll the challenger back first" in r.json()["detail"]
        r = http.post("/training/rollback/1.2.0")
        assert r.status_code == 200 and r.json()["action"] == "challenger rolled back"
        assert [a["model_id"] for a in load_routing()["families"][FAMILY]["arms"]] == ["m-new"]
        assert http.post("/training/rollback/1.2.0").status_code == 409  # retired, never champion
        assert http.post("/training/rollback/1.1.0").status_code == 409  # the champion
        assert http.post("/training/rollback/7.7.7").status_code == 404
        r = http.post("/training/rollback/1.0.0")
        assert r.status_code == 200 and r.json()["action"] == "former champion restored"
        assert r.json()["replaced"] == "m-new"
        assert [(a["model_id"], a["traffic_pct"]) for a in load_routing()["families"][FAMILY]["arms"]] == [
            ("m-champ", 100.0)]
        # forced promotion: recorded with its reason
        assert http.post("/training/deploy/1.2.0", json={"traffic_pct": 10}).status_code == 409  # retired
        con = connect(paths.warehouse_path())
        registry.register(con, model_id="m-4", organization_id=None, task_type="all", base_model="gpt-4o-mini",
                          backend="sandbox", method="supervised", job_id=None, job_key=None, dataset_version="d4",
                          stats={}, hyperparameters={}, trained_tokens=None)
        con.close()
        assert http.post("/training/deploy/m-4", json={"traffic_pct": 5}, headers={
            "Authorization": f"Bearer {BARE}"}).status_code == 200
        r = http.post("/training/promote-winner", json={"force": True, "reason": "legal requires the new prompt"})
        assert r.status_code == 200 and r.json()["forced"] and r.json()["action"] == "promoted (forced)"

        stats = http.get("/training/stats").json()
        assert stats["models"] == {"champion": 1, "retired": 3}
        assert stats["families"][0]["champion"] == "m-4" and stats["actions"]["deploy"]["ok"] == 3
        text = http.get("/metrics").text
        assert metric(text, "flywheel_requests_rejected_total", route="/training/promote-winner",
                      reason="conflict") >= 3

    rows = audit_rows()
    assert len(rows) == len({r["audit_id"] for r in rows}) and all(r["channel"] == "http" for r in rows)
    fingerprint = hashlib.sha256(ADMIN.encode()).hexdigest()[:16]
    assert {r["actor"] for r in rows} == {"admin:ops", f"admin:key-{hashlib.sha256(BARE.encode()).hexdigest()[:16]}"}
    assert {r["key_fingerprint"] for r in rows if r["actor"] == "admin:ops"} == {fingerprint}
    dump = json.dumps(rows, default=str)
    assert ADMIN not in dump and BARE not in dump  # never a key
    results = Counter((r["action"], r["result"]) for r in rows)
    # malformed bodies (no traffic_pct, an unknown field) are refused before any action: not audited
    assert results[("deploy", "invalid")] == 6 and results[("deploy", "not_found")] == 1
    assert results[("deploy", "conflict")] == 3 and results[("rollback", "conflict")] == 3
    assert results[("deploy", "ok")] == 3 and results[("promote", "conflict")] == 4
    assert results[("promote", "invalid")] == 1 and results[("promote", "ok")] == 2
    assert results[("rollback", "ok")] == 2 and results[("rollback", "not_found")] == 1
    forced = [r for r in rows if r["action"] == "promote" and r["result"] == "ok"][-1]
    assert json.loads(forced["parameters"]) == {"family": None, "force": True,
                                                "reason": "legal requires the new prompt"}
    assert "FORCED (legal requires the new prompt)" in forced["detail"] and forced["model_id"] == "m-4"
    con = connect(paths.warehouse_path(), read_only=True)
    statuses = dict(con.execute("SELECT model_id, status || '/' || ab_group FROM model_registry").fetchall())
    con.close()
    assert statuses == {"m-champ": "archived/archived", "m-new": "archived/archived",
                        "m-other": "archived/rolled_back", "m-4": "deployed/champion"}


def test_the_cli_runs_the_same_actions_audited_as_the_os_user(home, capsys):
    con = connect(paths.warehouse_path())
    _registry(con)
    con.close()
    assert flywheel(["deploy", "1.1.0", "--share", "60"]) == 2
    assert "invalid: traffic_pct 60 is outside (0, 50]" in capsys.readouterr().err
    assert flywheel(["deploy", "3.3.3", "--share", "10"]) == 2
    assert "not found: no registered model or version '3.3.3'" in capsys.readouterr().err
    assert flywheel(["deploy", "1.1.0", "--share", "25"]) == 0
    out = capsys.readouterr().out
    assert "deployed: m-new (flywheel-global-all 1.1.0)" in out and "challenger m-new 25%" in out
    assert flywheel(["promote"]) == 2
    assert "no significant winner in flywheel-global-all" in capsys.readouterr().err
    assert flywheel(["promote", "--force"]) == 2
    assert flywheel(["rollback", "1.1.0"]) == 0
    assert "challenger rolled back: m-new" in capsys.readouterr().out
    assert flywheel(["status"]) == 0
    out = capsys.readouterr().out
    assert "flywheel-global-all: champion m-champ (1.0.0); no challenger" in out and "rollback" in out
    assert flywheel(["status", "not-a-run"]) == 2
    assert "not found: no run not-a-run" in capsys.readouterr().err
    rows = audit_rows()
    assert {r["channel"] for r in rows} == {"cli"} and all(r["actor"].startswith("cli:") for r in rows)
    assert [(r["action"], r["result"]) for r in rows] == [
        ("deploy", "invalid"), ("deploy", "not_found"), ("deploy", "ok"), ("promote", "conflict"),
        ("promote", "invalid"), ("rollback", "ok")]
    assert [a["model_id"] for a in load_routing()["families"][FAMILY]["arms"]] == ["m-champ"]


# ---- a real retrain through Dagster ------------------------------------------------------------

def _wait_finished(http: httpx.Client, run_id: str, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = http.get(f"/training/status/{run_id}", headers=AS_ADMIN).json()
        if status["finished"]:
            return status
        time.sleep(1)
    raise AssertionError(f"run {run_id} did not finish within {timeout_s}s: {status}")


def test_a_retrain_launched_over_http_is_a_real_dagster_run_only_for_admins(home, capsys):
    from flywheel_pipeline.cli.jobs import run_refresh

    simulate(paths.landing_dir(), SimConfig(seed=8, days=40, end=date(2026, 4, 15), organizations=1,
                                            leads_per_org=150, messages_per_day=30))
    assert run_refresh(name_home=False).success
    with serve_app(app_for(home)) as base, httpx.Client(base_url=base, timeout=120) as http:
        assert http.post("/training/run").status_code == 401
        assert http.post("/training/run", headers=AS_ORG).status_code == 403
        assert http.post("/training/run", headers={"Authorization": "Bearer key-one-but-wrong"}).status_code == 401
        with dg.DagsterInstance.get() as instance:
            assert instance.get_runs(filters=dg.RunsFilter(job_name="retrain")) == []  # nothing launched
        r = http.post("/training/run", headers=AS_ADMIN)
        assert r.status_code == 202, r.text
        run_id = r.json()["run_id"]
        again = http.post("/training/run", headers=AS_ADMIN)
        assert again.status_code == 409 and again.json()["run_id"] == run_id
        assert f"already running: run {run_id}" in again.json()["detail"]
        assert flywheel(["retrain"]) == 2  # the CLI is refused the same way
        assert f"conflict: a retrain is already running: run {run_id}" in capsys.readouterr().err
        # the process executing it dies (kill -9): the run is marked failed and blocks nothing
        os.kill(r.json()["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (again := http.post("/training/run", headers=AS_ADMIN)).status_code == 409:
            assert time.monotonic() < deadline, again.text  # the pid outlives SIGKILL only until reaped
            time.sleep(0.5)
        assert again.status_code == 202, again.text
        dead = http.get(f"/training/status/{run_id}", headers=AS_ADMIN).json()
        assert dead["status"] == "FAILURE" and dead["finished"] and not dead["success"]
        run_id = again.json()["run_id"]
        status = _wait_finished(http, run_id)
        assert status["status"] == "SUCCESS" and status["success"] and status["launched_by"] == "admin:ops"
        steps = {s["step"]: s["status"] for s in status["steps"]}
        assert steps["fine_tuned_model"] == "SUCCESS" and steps["routing_table"] == "SUCCESS"
        assert status["model"]["version"] == "1.0.0" and status["model"]["model_id"].startswith("sandbox:")
        assert status["start"] < status["end"]
        assert http.get("/training/status/0f6c9c1e-0000-4000-8000-000000000000", headers=AS_ADMIN).status_code == 404
        models = http.get("/training/models", params={"status": "challenger"}, headers=AS_ADMIN).json()["models"]
        assert [m["model_id"] for m in models] == [status["model"]["model_id"]]
    with dg.DagsterInstance.get() as instance:  # the project's instance, as `flywheel ui` shows it
        run = instance.get_run_by_id(run_id)
        assert run.job_name == "retrain" and run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["flywheel/launched_by"] == "admin:ops" and run.tags["flywheel/trigger"] == "control-http"
        assert run.job_code_origin is not None  # re-executable from the UI
    assert flywheel(["status", run_id]) == 0
    assert f"run {run_id} of job retrain: SUCCESS" in capsys.readouterr().out
    # the CLI launches the same way and follows the run to its end
    assert flywheel(["retrain", "--wait", "--timeout", "300"]) == 0
    out = capsys.readouterr().out
    cli_run = out.split("Dagster run ", 1)[1].split()[0]
    assert f"run {cli_run} of job retrain: SUCCESS" in out and "  fine_tuned_model: SUCCESS" in out
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(cli_run).tags["flywheel/trigger"] == "control-cli"
    rows = audit_rows("action = 'retrain'")
    first = rows[0]["run_id"]
    assert [(r["channel"], r["result"], r["run_id"]) for r in rows] == [
        ("http", "ok", first), ("http", "conflict", first), ("cli", "conflict", first), ("http", "ok", run_id),
        ("cli", "ok", cli_run)]
    assert {r["actor"] for r in rows if r["channel"] == "http"} == {"admin:ops"}
    assert all(r["actor"].startswith("cli:") for r in rows if r["channel"] == "cli")
    # the trained challenger rolled back: off traffic, and its MLflow alias with it
    from mlflow import MlflowClient

    from flywheel_pipeline.tracking import default_tracking_uri

    client = MlflowClient(tracking_uri=default_tracking_uri())
    # the newest candidate that passed the offline gate is the challenger (without a trusted judge the
    # gate does not block: outcomes decide, core/judge_gate.py)
    challenger = next(a for a in load_routing()["families"][FAMILY]["arms"] if a["ab_group"] == "challenger")
    assert "challenger" in client.get_registered_model(FAMILY).aliases
    assert flywheel(["rollback", challenger["version"]]) == 0
    assert "MLflow: aliases updated" in capsys.readouterr().out
    assert "challenger" not in client.get_registered_model(FAMILY).aliases
    assert [a["ab_group"] for a in load_routing()["families"][FAMILY]["arms"]] == ["champion"]


def test_a_schema_8_warehouse_gets_the_audit_table_in_place(tmp_path):
    from flywheel_pipeline.warehouse import schema

    con = connect(tmp_path / "wh.duckdb")
    registry.register(con, model_id="m-1", organization_id=None, task_type="all", base_model="b", backend="sandbox",
                      method="supervised", job_id=None, job_key=None, dataset_version="d", stats={},
                      hyperparameters={}, trained_tokens=None)
    con.execute("DROP TABLE control_audit")
    con.execute("UPDATE schema_info SET value = ? WHERE key = 'schema_version'", [str(schema.CONTROL_AUDIT_SINCE - 1)])
    con.close()
    con = connect(tmp_path / "wh.duckdb")
    assert con.execute("SELECT count(*) FROM control_audit").fetchone() == (0,)
    assert con.execute("SELECT model_id FROM model_registry").fetchall() == [("m-1",)]
    assert con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone() == (
        str(schema.SCHEMA_VERSION),)
    con.close()


def test_a_warehouse_locked_by_another_process_is_503_and_nothing_happens(home, monkeypatch, capsys):
    import subprocess
    import sys

    from flywheel_pipeline import control

    con = connect(paths.warehouse_path())
    _registry(con)
    con.close()
    monkeypatch.setattr(control, "WAREHOUSE_WAIT_S", 1.0)
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(120)", str(paths.warehouse_path())],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with serve_app(app_for(home)) as base, httpx.Client(base_url=base, headers=AS_ADMIN, timeout=60) as http:
            r = http.post("/training/deploy/1.1.0", json={"traffic_pct": 20})
            assert r.status_code == 503 and r.json()["error"] == "warehouse_busy", r.text
            assert r.headers["Retry-After"] == "30" and "stayed locked" in r.json()["detail"]
        assert flywheel(["rollback", "1.0.0"]) == 2
        assert "busy: the warehouse stayed locked" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert not paths.routing_path().exists() and audit_rows() == []  # not recorded, so not done
    con = connect(paths.warehouse_path(), read_only=True)
    assert con.execute("SELECT status FROM model_registry WHERE model_id = 'm-new'").fetchone() == ("ready",)
    con.close()
