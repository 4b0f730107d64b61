"""Training: the fine_tuned_model asset with the sandbox and an OpenAI-protocol server, the
registry's versions, MLflow read back, the retrain schedule and sensors."""

from __future__ import annotations

import json
from datetime import date, datetime

import dagster as dg
import pytest
from mlflow import MlflowClient

from flywheel_pipeline.simulator import SimConfig, simulate
from flywheel_pipeline.core.versioning import change_kind, next_version
from flywheel_pipeline.defs.operations.sensors import run_failure_sensor
from flywheel_pipeline.defs.training.automation import new_outcomes_sensor, weekly_retrain_schedule
from flywheel_pipeline.defs.resources import (ExportsResource, FineTuningResource, GenerationResource,
                                              JudgeResource, LabelPolicyResource, LandingZoneResource,
                                              MlflowResource, WarehouseResource)
from flywheel_pipeline.core.calibration import Calibration
from flywheel_pipeline.warehouse import model_registry as registry
from flywheel_pipeline.warehouse.judge_calibration import write_calibration
from flywheel_pipeline.warehouse.message_judgements import judge_new_messages
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.domains import checks_of, only_assets_of
from flywheel_pipeline_tests.fakes.openai_server import FakeOpenAI, serve

ALL = [*only_assets_of("ingest", "outcomes", "datasets", "training"), *checks_of("datasets", "training")]


def resources(root, fine_tuning=None):
    return {"warehouse": WarehouseResource(database=str(root / "wh.duckdb")),
            "landing": LandingZoneResource(path=str(root / "landing")),
            "label_policy": LabelPolicyResource(), "exports": ExportsResource(path=str(root / "exports")),
            "fine_tuning": fine_tuning or FineTuningResource(), "generation": GenerationResource(),
            "judge": JudgeResource(), "mlflow": MlflowResource(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")}


def world(root, days, end):
    simulate(root / "landing", SimConfig(seed=8, days=days, end=end, organizations=1, leads_per_org=150,
                                         messages_per_day=30))


def test_two_training_cycles_register_versions_and_mlflow(tmp_path):
    with dg.instance_for_test() as instance:
        world(tmp_path, 40, date(2026, 4, 15))
        first = dg.materialize(ALL, instance=instance, resources=resources(tmp_path))
        assert first.success
        world(tmp_path, 54, date(2026, 4, 29))  # two more weeks land: the same world, extended
        second = dg.materialize(ALL, instance=instance, resources=resources(tmp_path))
        assert second.success
        meta = {e.asset_key.to_user_string(): e.materialization.metadata
                for e in second.get_asset_materialization_events()}["fine_tuned_model"]
        assert meta["version"].value == "1.1.0" and "SANDBOX" in meta["backend"].value
        assert meta["mlflow_run"].value.startswith("http://127.0.0.1:5000/#/experiments/")
    con = connect(tmp_path / "wh.duckdb")
    rows = con.execute("SELECT version, status, dataset_version, mlflow_run_id, mlflow_model_version "
                       "FROM model_registry ORDER BY created_at").fetchall()
    con.close()
    assert [r[0] for r in rows] == ["1.0.0", "1.1.0"] and rows[0][2] != rows[1][2]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = client.get_registered_model("flywheel-global-all")
    assert {k: str(v) for k, v in model.aliases.items()} == {"challenger": "2"}
    version = client.get_model_version("flywheel-global-all", "2")
    assert version.tags["flywheel.version"] == "1.1.0" and version.tags["flywheel.sandbox"] == "true"
    run = client.get_run(rows[1][3])
    assert run.data.params["dataset_version"] == rows[1][2] and run.data.params["method"] == "supervised"
    assert run.data.metrics["training_examples"] > 0
    assert [i.dataset.digest for i in run.inputs.dataset_inputs] == [rows[1][2]]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "export")}
    assert "export/sft.train.jsonl" in artifacts and "export/sft.validation_report.json" in artifacts


def test_openai_backend_through_the_asset_reattaches_and_reports_failures(tmp_path):
    world(tmp_path, 40, date(2026, 4, 15))
    fake = FakeOpenAI()
    with serve(fake) as url, dg.instance_for_test() as instance:
        ft = FineTuningResource(backend="openai", api_key="sk-test", base_url=url, poll_s=0.01)
        assert dg.materialize(ALL, instance=instance, resources=resources(tmp_path, ft)).success
        assert len(fake.create_calls) == 1
        # a re-execution of the training step for the same dataset and config re-attaches
        again = dg.materialize(ALL, instance=instance, resources=resources(tmp_path, ft),
                               selection=dg.AssetSelection.assets("fine_tuned_model"))
        assert again.success and len(fake.create_calls) == 1
        meta = again.asset_materializations_for_node("fine_tuned_model")[0].metadata
        assert meta["reattached"].value is True and meta["model_id"].value.startswith("ft:gpt-4o-mini")
        assert "ckpt-step-20" in meta["checkpoints"].value and meta["final_train_loss"].value == pytest.approx(1 / 3)
        # a job the provider fails turns into a failed materialization carrying its error
        failed = dg.materialize(ALL, instance=instance, resources=resources(tmp_path, ft), raise_on_error=False,
                                selection=dg.AssetSelection.assets("fine_tuned_model"),
                                run_config={"ops": {"fine_tuned_model": {"config": {"base_model": "fail-model"}}}})
        assert not failed.success
        failure = [e for e in failed.all_events if e.is_step_failure][0]
        assert "invalid_training_file: line 3: bad role" in failure.event_specific_data.error.message
        assert fake.create_calls[-1]["model"] == "fail-model" and len(fake.create_calls) == 2


def test_semantic_versions():
    assert next_version(None) == "1.0.0"
    assert next_version("1.4.2") == "1.5.0"
    assert next_version("1.4.2", "major") == "2.0.0"
    assert next_version("1.4.2", "patch") == "1.4.3"
    assert next_version("1.4.2", override="1.10.0") == "1.10.0"
    with pytest.raises(ValueError):
        next_version("1.4.2", override="1.4.2")
    with pytest.raises(ValueError):
        next_version("x.y")
    base = {"base_model": "a", "method": "supervised", "dataset_version": "d1"}
    assert change_kind(None, base) == "minor"
    assert change_kind(base, {**base, "dataset_version": "d2"}) == "minor"
    assert change_kind(base, {**base, "method": "dpo"}) == "major"
    assert change_kind(base, dict(base)) == "patch"


def test_registry_versions_and_status_lifecycle(tmp_path):
    con = connect(tmp_path / "wh.duckdb")
    kw = dict(organization_id="org-1", task_type="cold_email", base_model="m", backend="sandbox", job_id="j",
              job_key="k", stats={"examples": 10}, hyperparameters={}, trained_tokens=0)
    a = registry.register(con, model_id="m1", method="supervised", dataset_version="d1", **kw)
    b = registry.register(con, model_id="m2", method="supervised", dataset_version="d2", **kw)
    c = registry.register(con, model_id="m3", method="dpo", dataset_version="d2", **kw)
    assert (a.version, b.version, c.version) == ("1.0.0", "1.1.0", "2.0.0")
    assert a.family == "flywheel-org-1-cold_email"
    assert registry.register(con, model_id="m2", method="supervised", dataset_version="d2", **kw).change == "existing"
    registry.set_status(con, "m1", "deployed", traffic_pct=100, ab_group="champion")
    assert registry.champion(con, a.family) == "m1"
    with pytest.raises(ValueError, match="cannot become"):
        registry.set_status(con, "m1", "training")
    registry.set_status(con, "m1", "archived")
    assert registry.champion(con, a.family) is None
    con.close()


def test_weekly_schedule():
    assert weekly_retrain_schedule.cron_schedule == "0 2 * * 1"
    assert weekly_retrain_schedule.execution_timezone == "UTC" and weekly_retrain_schedule.job_name == "retrain"


def test_new_outcomes_sensor_fires_once_per_outcome_count(tmp_path, monkeypatch):
    res = {"warehouse": WarehouseResource(database=str(tmp_path / "wh.duckdb"))}
    with dg.instance_for_test() as instance:
        skip = new_outcomes_sensor(dg.build_sensor_context(instance=instance, resources=res))
        assert isinstance(skip, dg.SkipReason) and "not readable" in skip.skip_message
        world(tmp_path, 40, date(2026, 4, 15))
        assert dg.materialize(only_assets_of("ingest", "outcomes"), instance=instance,
                              resources=resources(tmp_path)).success
        monkeypatch.setenv("FLYWHEEL_MIN_NEW_EXAMPLES", "100000")
        few = new_outcomes_sensor(dg.build_sensor_context(instance=instance, resources=res))
        assert isinstance(few, dg.SkipReason) and "waiting for 100000" in few.skip_message
        monkeypatch.setenv("FLYWHEEL_MIN_NEW_EXAMPLES", "10")
        ctx = dg.build_sensor_context(instance=instance, resources=res)
        fire = new_outcomes_sensor(ctx)
        assert isinstance(fire, dg.RunRequest) and fire.run_key.startswith("retrain-")
        again = new_outcomes_sensor(dg.build_sensor_context(instance=instance, resources=res, cursor=ctx.cursor))
        assert isinstance(again, dg.SkipReason) and "already requested" in again.skip_message


def test_run_failure_sensor_records_the_failure(home):
    @dg.asset
    def broken():
        raise RuntimeError("boom")

    with dg.instance_for_test() as instance:
        result = dg.materialize([broken], instance=instance, raise_on_error=False)
        run = instance.get_run_by_id(result.run_id)
        failure = [e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE"][0]
        ctx = dg.build_run_status_sensor_context(sensor_name="run_failure_sensor", dagster_instance=instance,
                                                 dagster_run=run, dagster_event=failure).for_run_failure()
        run_failure_sensor(ctx)
    lines = (home / "alerts" / "failures.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["run_id"] == result.run_id


# ---- offline evaluation ------------------------------------------------------------------

from flywheel_pipeline.core.generation import GENERIC_ANSWER, SandboxGenerator  # noqa: E402
from flywheel_pipeline.core.judge import HeuristicJudge, heuristic_score, judge_pair  # noqa: E402

GOOD = ("Subject: {{company}} and reply rates\n\nHi {{first_name}},\n\nSaaS sales teams like yours use us to see "
        "which outreach books meetings. We cut guesswork from sequences. Would a short call next week help?\n\n"
        "Best,\n{{sender_name}}")


def test_heuristic_judge_signals_and_pairing():
    good, bad = heuristic_score(GOOD, "vp sales at a saas company"), heuristic_score(GENERIC_ANSWER)
    assert good.total > bad.total and good.call_to_action == 1.0 and bad.spam < 1.0
    assert good.personalization > bad.personalization
    import random as _random

    judge = HeuristicJudge()
    winners = {judge_pair(judge, "p", GOOD, GENERIC_ANSWER, _random.Random(s)).winner for s in range(20)}
    shown = {judge_pair(judge, "p", GOOD, GENERIC_ANSWER, _random.Random(s)).shown_first for s in range(20)}
    assert winners == {"candidate"} and shown == {"candidate", "champion"}  # order randomized, verdict stable
    assert judge_pair(judge, "p", GOOD, GOOD + "  ", _random.Random(1)).winner == "skipped"
    assert judge_pair(HeuristicJudge(tie_margin=1.0), "p", GOOD, GENERIC_ANSWER, _random.Random(1)).winner == "tie"


def test_sandbox_generator_answers_from_its_training_data(tmp_path):
    train = tmp_path / "sft.train.jsonl"
    train.write_text(json.dumps({"messages": [{"role": "user", "content": "write to a saas founder"},
                                              {"role": "assistant", "content": GOOD}]}) + "\n")
    gen = SandboxGenerator({"sandbox:m": train})
    assert gen.generate("sandbox:m", [{"role": "user", "content": "a saas founder"}]) == GOOD
    assert gen.generate("gpt-4o-mini", [{"role": "user", "content": "x"}]) == GENERIC_ANSWER


def _calibrate(root, judge: str, trusted: bool) -> None:
    """judge_calibration as it would read after a run that found ``judge`` (not) predicting replies."""
    low = 0.56 if trusted else 0.47
    row = Calibration(judge, "1", "all", "reply", 5000, 800, 0.16, low + 0.04, 0.01, low, low + 0.08, 0.99, 0.1,
                      0.001, 5000, True, trusted)
    con = connect(root / "wh.duckdb")
    write_calibration(con, [row], [], datetime(2026, 4, 15))
    con.close()


def test_offline_evaluation_gate_only_a_trusted_judge_blocks_a_worse_candidate(tmp_path):
    world(tmp_path, 40, date(2026, 4, 15))
    fake = FakeOpenAI()
    fake.answers = {"": GOOD, "ft:": GENERIC_ANSWER}  # the fine-tuned candidate writes worse e-mails
    only_evaluation = dg.AssetSelection.assets("offline_evaluation")
    with serve(fake) as url, dg.instance_for_test() as instance:
        res = {**resources(tmp_path, FineTuningResource(backend="openai", api_key="k", base_url=url, poll_s=0.01)),
               "generation": GenerationResource(mode="openai", api_key="k", base_url=url)}
        # no judge calibrated yet: the judge's verdict is recorded, not used; the A/B test decides
        result = dg.materialize(ALL, instance=instance, resources=res, raise_on_error=False)
        assert result.success
        meta = result.asset_materializations_for_node("offline_evaluation")[0].metadata
        assert meta["loss_rate"].value > 0.5 and meta["decided_by"].value == "outcomes"
        assert meta["gate_passed"].value and not meta["judge_trusted"].value
        assert "heuristic:v1 has no calibration" in meta["gate_reason"].value
        models = {c["model"] for c in fake.chat_calls}
        assert "gpt-4o-mini-2024-07-18" in models and any(m.startswith("ft:") for m in models) and len(models) == 2
        # a heuristic scorer the calibration trusts: it decides, and blocks the worse candidate
        con = connect(tmp_path / "wh.duckdb")
        judge_new_messages(con)
        con.close()
        _calibrate(tmp_path, "heuristic:email_writing", trusted=True)
        result = dg.materialize(ALL, instance=instance, resources=res, raise_on_error=False, selection=only_evaluation)
        assert not result.success
        check = {e.check_name: e for e in result.get_asset_check_evaluations()}["candidate_not_worse_than_champion"]
        assert not check.passed and check.metadata["loss_rate"].value > 0.5
        assert check.metadata["decided_by"].value == "heuristic:email_writing"
        con = connect(tmp_path / "wh.duckdb", read_only=True)
        record = con.execute("SELECT judge, decided_by, judge_trusted, gate_passed FROM offline_evaluations "
                             "ORDER BY created_at").fetchall()
        con.close()
        assert record == [("heuristic:v1", "outcomes", False, True),
                          ("heuristic:email_writing", "heuristic:email_writing", True, False)]
        # the same pipeline with a better candidate passes the gate
        fake.answers = {"": GENERIC_ANSWER, "ft:": GOOD}
        ok = dg.materialize(ALL, instance=instance, resources=res, selection=only_evaluation)
        assert ok.success
        # the heuristic calibrated but not trusted: back to outcomes
        _calibrate(tmp_path, "heuristic:email_writing", trusted=False)
        fake.answers = {"": GOOD, "ft:": GENERIC_ANSWER}
        again = dg.materialize(ALL, instance=instance, resources=res, selection=only_evaluation)
        meta = again.asset_materializations_for_node("offline_evaluation")[0].metadata
        assert again.success and meta["decided_by"].value == "outcomes" and "not trusted" in meta["gate_reason"].value


def test_geval_judge_through_deepeval_against_an_openai_compatible_server(tmp_path):
    """The LLM judge: deepeval's G-Eval over the openai SDK against a local server that speaks
    OpenAI's chat completions (JSON mode); its scores decide, and the gate blocks a worse candidate."""
    pytest.importorskip("deepeval", reason="the G-Eval judge is the optional extra [judge]")
    world(tmp_path, 40, date(2026, 4, 15))
    fake = FakeOpenAI()
    # the judge prefers a short e-mail that asks a question; it sees only the text, not the model
    fake.judge_scorer = lambda text: 9 if "?" in text and "!!" not in text else 2
    fake.answers = {"": GENERIC_ANSWER, "ft:": GOOD}
    with serve(fake) as url, dg.instance_for_test() as instance:
        res = {**resources(tmp_path, FineTuningResource(backend="openai", api_key="k", base_url=url, poll_s=0.01)),
               "generation": GenerationResource(mode="openai", api_key="k", base_url=url),
               "judge": JudgeResource(mode="geval", model="judge-llm", api_key="k", base_url=url)}
        result = dg.materialize(ALL, instance=instance, resources=res)
        meta = result.asset_materializations_for_node("offline_evaluation")[0].metadata
        assert meta["judge"].value == "deepeval-geval:judge-llm"
        assert meta["win_rate"].value == 1.0 and meta["mean_candidate_score"].value == 0.9
        assert meta["mean_champion_score"].value == 0.2
        judged = [c for c in fake.chat_calls if c["model"] == "judge-llm"]
        assert judged and all(c["response_format"] == {"type": "json_object"} and c["temperature"] == 0
                              for c in judged)
        assert len(judged) == 2 * meta["prompts"].value - 2 * meta["skipped_identical"].value
        fake.answers = {"": GOOD, "ft:": GENERIC_ANSWER}  # now the candidate writes the worse e-mails
        # the message judge with this model and criteria predicts replies: it decides
        _calibrate(tmp_path, "geval:email_writing@judge-llm", trusted=True)
        blocked = dg.materialize(ALL, instance=instance, resources=res, raise_on_error=False,
                                 selection=dg.AssetSelection.assets("offline_evaluation"))
        checks = {e.check_name: e for e in blocked.get_asset_check_evaluations()}
        assert not checks["candidate_not_worse_than_champion"].passed
        decided_by = checks["candidate_not_worse_than_champion"].metadata["decided_by"].value
        assert decided_by == "geval:email_writing@judge-llm"


def test_judge_resource_refuses_incomplete_configuration():
    with pytest.raises(ValueError, match="needs model and api_key"):
        JudgeResource(mode="geval").judge()
    with pytest.raises(ValueError, match="unknown judge mode"):
        JudgeResource(mode="oracle").judge()
    assert JudgeResource().judge().name == "heuristic:v1"
