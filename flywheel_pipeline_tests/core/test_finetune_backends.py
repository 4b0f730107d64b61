"""Fine-tuning backends against a local server that speaks OpenAI's protocol, and the
never-pay-twice job store."""

from __future__ import annotations

import json
from datetime import date

import pytest

from flywheel_pipeline.core.finetune.base import FineTuneError, JobRequest, JobStatus, TrainingFiles
from flywheel_pipeline.core.finetune.openai_backend import OpenAIBackend, openai_deadline_warning
from flywheel_pipeline.core.finetune.sandbox import SandboxBackend
from flywheel_pipeline.warehouse.finetune_jobs import duckdb_connect, job_key, submit_or_attach, wait_for_job
from flywheel_pipeline_tests.fakes.openai_server import FakeOpenAI, serve

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.fixture
def files(tmp_path):
    train = tmp_path / "sft.train.jsonl"
    train.write_text("\n".join(json.dumps(CHAT) for _ in range(10)) + "\n")
    validation = tmp_path / "sft.validation.jsonl"
    validation.write_text(json.dumps(CHAT) + "\n")
    return TrainingFiles(train, validation, "v123")


@pytest.fixture
def fake():
    server = FakeOpenAI()
    with serve(server) as url:
        server.url = url
        yield server


def request(files, model="gpt-4o-mini-2024-07-18", method="supervised", **kw):
    hyper = {"n_epochs": 3} if method == "supervised" else {"beta": 0.1}
    return JobRequest(files, method, model, hyper, suffix="flywheel", seed=7, **kw)


def no_sleep(_):
    pass


def test_openai_backend_request_shapes_and_success(fake, files, tmp_path):
    backend = OpenAIBackend("sk-test", fake.url)
    connect = duckdb_connect(str(tmp_path / "wh.duckdb"))
    job, attached = submit_or_attach(connect, backend, request(files, method="dpo"))
    assert not attached and job.status is JobStatus.VALIDATING
    body = fake.create_calls[0]
    assert body["method"] == {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}
    assert (body["suffix"], body["seed"], body["validation_file"] in fake.files) == ("flywheel", 7, True)
    assert body["metadata"]["dataset_version"] == "v123" and body["metadata"]["flywheel_job_key"]
    done = wait_for_job(connect, backend, job, sleep=no_sleep)
    assert done.status is JobStatus.SUCCEEDED and done.trained_tokens == 12345
    assert backend.result(done.job_id).startswith("ft:gpt-4o-mini-2024-07-18:org-test:flywheel:")
    events = backend.events(done.job_id)
    assert [e.step for e in events] == [1, 2, 3] and events[-1].train_loss == pytest.approx(1 / 3)
    checkpoints = backend.checkpoints(done.job_id)
    assert [c["step"] for c in checkpoints] == [10, 20] and checkpoints[1]["valid_loss"] == pytest.approx(0.6)
    assert checkpoints[0]["model"].endswith("ckpt-step-10")
    with connect() as con:
        row = con.execute("SELECT status, fine_tuned_model, trained_tokens FROM finetune_jobs").fetchone()
    assert row[0] == "succeeded" and row[1].startswith("ft:") and row[2] == 12345


def test_retry_after_a_crash_reattaches_and_never_creates_twice(fake, files, tmp_path):
    backend = OpenAIBackend("sk-test", fake.url)
    connect = duckdb_connect(str(tmp_path / "wh.duckdb"))
    first, _ = submit_or_attach(connect, backend, request(files))
    # the run dies while waiting; a re-execution of the same materialization:
    again, attached = submit_or_attach(connect, backend, request(files))
    assert attached and again.job_id == first.job_id
    assert len(fake.create_calls) == 1

    # the worst case: the provider accepted the job but we died before recording its id
    with connect() as con:
        con.execute("UPDATE finetune_jobs SET job_id = NULL, status = 'submitting'")
    recovered, attached = submit_or_attach(connect, backend, request(files))
    assert attached and recovered.job_id == first.job_id
    assert len(fake.create_calls) == 1
    # a different dataset version is a different job
    other = TrainingFiles(files.train, files.validation, "v999")
    submit_or_attach(connect, backend, request(other))
    assert len(fake.create_calls) == 2


def test_failed_and_cancelled_jobs_raise_with_the_providers_error(fake, files, tmp_path):
    backend = OpenAIBackend("sk-test", fake.url)
    connect = duckdb_connect(str(tmp_path / "wh.duckdb"))
    job, _ = submit_or_attach(connect, backend, request(files, model="fail-model"))
    with pytest.raises(FineTuneError, match="failed: invalid_training_file: line 3: bad role") as info:
        wait_for_job(connect, backend, job, sleep=no_sleep)
    assert info.value.job.status is JobStatus.FAILED
    with pytest.raises(FineTuneError, match="is failed"):
        backend.result(job.job_id)

    job2, _ = submit_or_attach(connect, backend, request(files, model="gpt-4.1-mini-2025-04-14"))
    cancelled = backend.cancel(job2.job_id)
    assert cancelled.status is JobStatus.CANCELLED and fake.cancel_calls == 1
    with pytest.raises(FineTuneError, match="cancelled"):
        wait_for_job(connect, backend, cancelled, sleep=no_sleep)
    with connect() as con:
        statuses = sorted(r[0] for r in con.execute("SELECT status FROM finetune_jobs").fetchall())
    assert statuses == ["cancelled", "failed"]


def test_waiting_backs_off_and_times_out_without_resubmitting(fake, files, tmp_path):
    backend = OpenAIBackend("sk-test", fake.url)
    connect = duckdb_connect(str(tmp_path / "wh.duckdb"))
    job, _ = submit_or_attach(connect, backend, request(files))
    delays = []
    done = wait_for_job(connect, backend, job, poll_s=1, max_poll_s=3, sleep=delays.append)
    assert delays == [1, 2, 3, 3] and done.status is JobStatus.SUCCEEDED
    job2, _ = submit_or_attach(connect, backend, request(files, model="gpt-4o-2024-08-06"))
    with pytest.raises(FineTuneError, match="not resubmitted"):
        wait_for_job(connect, backend, job2, timeout_s=-1, sleep=no_sleep)


def test_http_errors_are_clear(fake, files, tmp_path):
    import openai

    backend = OpenAIBackend("sk-test", fake.url, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        backend.status("ftjob-missing")


def test_sandbox_is_labelled_deterministic_and_stateless(files, tmp_path):
    sandbox = SandboxBackend()
    connect = duckdb_connect(str(tmp_path / "wh.duckdb"))
    job, attached = submit_or_attach(connect, sandbox, request(files))
    assert not attached and job.status is JobStatus.SUCCEEDED
    model = wait_for_job(connect, sandbox, job, sleep=no_sleep).fine_tuned_model
    assert model.startswith("sandbox:gpt-4o-mini-2024-07-18:supervised:")
    assert SandboxBackend().result(job.job_id) == model  # any process can answer
    assert "SANDBOX" in sandbox.events(job.job_id)[0].message and job.metadata["sandbox"] == "true"
    again, attached = submit_or_attach(connect, sandbox, request(files))
    assert attached and again.job_id == job.job_id
    with pytest.raises(FineTuneError):
        sandbox.status("ftjob-123")


def test_job_key_covers_the_configuration(files):
    base = job_key("openai", request(files))
    assert base == job_key("openai", request(files))
    assert base != job_key("openai", request(files, model="gpt-4o-2024-08-06"))
    assert base != job_key("together", request(files))
    with pytest.raises(ValueError):
        JobRequest(files, "rlhf", "m")


def test_openai_deadline_warning():
    assert "after 2027-01-06" in openai_deadline_warning(None, date(2026, 11, 22))
    assert "45 days left" in openai_deadline_warning("https://api.openai.com/v1", date(2026, 11, 22))
    assert "stopped accepting" in openai_deadline_warning(None, date(2027, 2, 1))
    assert openai_deadline_warning("http://127.0.0.1:8000/v1", date(2026, 11, 22)) is None


# ---- Together ----------------------------------------------------------------------------

from flywheel_pipeline.core.finetune.together_backend import TogetherBackend  # noqa: E402
from flywheel_pipeline_tests.fakes.together_server import FakeTogether  # noqa: E402


@pytest.fixture
def together():
    server = FakeTogether()
    with serve(server) as url:
        server.url = url
        yield server


def test_together_backend_lora_dpo_and_reattach(together, files, tmp_path):
    backend = TogetherBackend("tg-key", together.url)
    connect = duckdb_connect(str(tmp_path / "wh.duckdb"))
    req = request(files, model="meta-llama/Llama-3.2-3B-Instruct", method="dpo")
    job, attached = submit_or_attach(connect, backend, req)
    body = together.create_calls[0]
    assert body["training_type"]["type"] == "Lora" and body["training_method"] == {"method": "dpo", "dpo_beta": 0.1}
    assert body["validation_file"] in together.files and body["random_seed"] == 7
    assert body["suffix"].startswith("flywheel-") and all(a == "Bearer tg-key" for a in together.auth)
    done = wait_for_job(connect, backend, job, sleep=no_sleep)
    assert done.status is JobStatus.SUCCEEDED and backend.result(done.job_id).startswith("acct/")
    assert done.trained_tokens == 4321 and backend.events(done.job_id)[-1].train_loss == 0.9
    # crash before the id was recorded: found by the key carried in the suffix
    with connect() as con:
        con.execute("UPDATE finetune_jobs SET job_id = NULL, status = 'submitting'")
    again, attached = submit_or_attach(connect, backend, req)
    assert attached and again.job_id == job.job_id and len(together.create_calls) == 1


def test_together_failures_and_full_training(together, files, tmp_path):
    backend = TogetherBackend("tg-key", together.url, lora=False)
    connect = duckdb_connect(str(tmp_path / "wh.duckdb"))
    job, _ = submit_or_attach(connect, backend, request(files, model="fail/model"))
    assert together.create_calls[0]["training_type"] == {"type": "Full"}
    with pytest.raises(FineTuneError, match="dataset validation failed"):
        wait_for_job(connect, backend, job, sleep=no_sleep)
    with pytest.raises(FineTuneError, match="HTTP 404"):
        backend.status("ft-missing")
    job2, _ = submit_or_attach(connect, backend, request(files, model="org/other"))
    assert backend.cancel(job2.job_id).status is JobStatus.CANCELLED


def test_resource_chooses_the_backend_and_requires_a_key():
    from flywheel_pipeline.defs.resources import FineTuningResource

    assert FineTuningResource().client().name == "sandbox"
    assert FineTuningResource(backend="together", api_key="k", base_url="http://127.0.0.1:9/v1").client().name == \
        "together"
    with pytest.raises(ValueError, match="needs api_key"):
        FineTuningResource(backend="openai").client()
    assert FineTuningResource(backend="trl", local_output="/tmp/x").client().name == "trl"
    with pytest.raises(ValueError, match="unknown fine-tuning backend"):
        FineTuningResource(backend="vertex", api_key="k").client()
