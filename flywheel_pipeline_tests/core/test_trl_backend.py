"""Local LoRA SFT and DPO with transformers + peft + TRL on a tiny, randomly initialised model
and a tokenizer built from the test data (no download). Needs the ``[local]`` extra, which
``make test`` installs; skipped with the reason where it is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="the [local] extra (torch, transformers, peft, trl) is not installed")

from flywheel_pipeline.core.finetune.base import JobRequest, JobStatus, TrainingFiles  # noqa: E402
from flywheel_pipeline.core.finetune.trl_backend import TrlBackend  # noqa: E402
from flywheel_pipeline.warehouse.finetune_jobs import duckdb_connect, submit_or_attach, wait_for_job  # noqa: E402

CHAT = [{"messages": [{"role": "system", "content": "You write outreach."},
                      {"role": "user", "content": f"write to the founder of company {i}"},
                      {"role": "assistant", "content": "Hi {{first_name}}, worth a short call next week?"}]}
        for i in range(8)]
PREF = [{"input": {"messages": [{"role": "user", "content": f"write to the founder of company {i}"}]},
         "preferred_output": [{"role": "assistant", "content": "worth a short call next week?"}],
         "non_preferred_output": [{"role": "assistant", "content": "BUY NOW free offer"}]} for i in range(8)]


def tiny_model(directory: Path, texts: list[str]) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>")
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    texts = [m["content"] for ex in CHAT for m in ex["messages"]] + ["BUY NOW free offer"]
    return tiny_model(tmp_path_factory.mktemp("tiny-llama"), texts)


def _files(tmp_path, rows, name):
    path = tmp_path / f"{name}.train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return TrainingFiles(path, None, f"v-{name}")


@pytest.mark.parametrize("method, rows", [("supervised", CHAT), ("dpo", PREF)])
def test_local_lora_training_saves_an_adapter_and_reattaches(tmp_path, base, method, rows):
    backend = TrlBackend(tmp_path / "models", lora_r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                         use_cpu=True)
    connect = duckdb_connect(str(tmp_path / "wh.duckdb"))
    request = JobRequest(_files(tmp_path, rows, method), method, str(base),
                         {"max_steps": 3, "batch_size": 2, "max_length": 64, "beta": 0.1}, seed=1)
    job, attached = submit_or_attach(connect, backend, request)
    done = wait_for_job(connect, backend, job, sleep=lambda _: None)
    assert (attached, done.status) == (False, JobStatus.SUCCEEDED)
    adapter = Path(backend.result(done.job_id).removeprefix("local:"))
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    losses = [e.train_loss for e in backend.events(done.job_id)]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    again, attached = submit_or_attach(connect, backend, request)
    assert attached and again.job_id == done.job_id


def test_a_broken_base_model_fails_with_the_error(tmp_path):
    backend = TrlBackend(tmp_path / "models", use_cpu=True)
    connect = duckdb_connect(str(tmp_path / "wh.duckdb"))
    request = JobRequest(_files(tmp_path, CHAT, "sft"), "supervised", str(tmp_path / "no-such-model"), {})
    job, _ = submit_or_attach(connect, backend, request)
    assert job.status is JobStatus.FAILED and job.error
