"""Fine-tuning formats, the validator (every rule failing and passing), token counts,
PII redaction on tricky cases, and `flywheel validate`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flywheel_pipeline.core.finetune_format import (ERROR_KINDS, chat_errors, chat_example, preference_errors,
                                                    preference_example, recommended_epochs, validate_file)
from flywheel_pipeline.core.pii import contains_contact_pii, redact
from flywheel_pipeline.core.tokens import approximate_tokens, counter_for_model, encoding_name_for_model

GOOD_CHAT = chat_example("You write outreach.", "Write to {{first_name}}.", "Hi {{first_name}}, ...")
GOOD_PREF = preference_example("You write outreach.", "Write to {{first_name}}.", "Short and specific.",
                               "Long and vague.")
TOOL_CALL = {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}


def msgs(*messages):
    return {"messages": list(messages)}


U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}

# every chat rule: (error kind, an example that breaks it); the good example breaks none
CHAT_CASES = [
    ("not_an_object", ["a list"]),
    ("unknown_example_key", {**GOOD_CHAT, "extra": 1}),
    ("missing_messages", {"messages": []}),
    ("missing_messages", {"prompt": "x"} | {"messages": "not a list"}),
    ("message_not_an_object", msgs("hi", U, A)),
    ("message_missing_role", msgs({"content": "hi"}, A)),
    ("message_missing_content", msgs({"role": "user"}, A)),
    ("message_missing_content", msgs({"role": "user", "content": "  "}, A)),
    ("message_missing_content", msgs({"role": "user", "content": None}, A)),
    ("message_unknown_key", msgs({**U, "lang": "en"}, A)),
    ("unknown_role", msgs({"role": "customer", "content": "hi"}, A)),
    ("invalid_content", msgs({"role": "user", "content": 42}, A)),
    ("invalid_content", msgs({"role": "user", "content": [{"type": "audio"}]}, A)),
    ("invalid_tool_call", msgs(U, {"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]})),
    ("no_assistant_message", msgs(U)),
    ("last_message_not_assistant", msgs(U, A, U)),
    ("invalid_weight", msgs(U, {**A, "weight": 2})),
    ("invalid_weight", msgs(U, {**A, "weight": True})),
    ("invalid_weight", msgs({**U, "weight": 1}, A)),
]


@pytest.mark.parametrize("kind, example", CHAT_CASES)
def test_each_chat_rule_fails_its_example(kind, example):
    assert kind in chat_errors(example)


@pytest.mark.parametrize("example", [
    GOOD_CHAT,
    msgs(U, A),
    msgs(U, {**A, "weight": 0}, U, {**A, "weight": 1}),
    msgs(U, TOOL_CALL, {"role": "tool", "tool_call_id": "c1", "content": "42"}, A),  # the guide rejects this
    msgs({"role": "user", "content": [{"type": "text", "text": "hi"}]}, A),
])
def test_valid_chat_examples_pass(example):
    assert chat_errors(example) == []


def test_every_error_kind_is_exercised():
    exercised = ({k for k, _ in CHAT_CASES} | {k for k, _ in PREF_CASES}
                 | {"invalid_json", "not_utf8", "byte_order_mark"})  # the file tests below
    assert exercised == set(ERROR_KINDS)


PREF_CASES = [
    ("not_an_object", "text"),
    ("unknown_example_key", {**GOOD_PREF, "score": 1}),
    ("missing_input", {**GOOD_PREF, "input": {"messages": []}}),
    ("not_single_turn", {**GOOD_PREF, "input": {"messages": [U, A, U]}}),
    ("not_single_turn", {**GOOD_PREF, "input": {"messages": [{"role": "system", "content": "s"}]}}),
    ("output_not_final_assistant", {**GOOD_PREF, "preferred_output": [U]}),
    ("output_not_final_assistant", {**GOOD_PREF, "non_preferred_output": [A, A]}),
    ("output_not_final_assistant", {**GOOD_PREF, "preferred_output": {"role": "assistant", "content": "x"}}),
    ("identical_outputs", {**GOOD_PREF, "non_preferred_output": GOOD_PREF["preferred_output"]}),
    ("message_unknown_key", {**GOOD_PREF, "input": {"messages": [{**U, "x": 1}]}}),
]


@pytest.mark.parametrize("kind, example", PREF_CASES)
def test_each_preference_rule_fails_its_example(kind, example):
    assert kind in preference_errors(example)


def test_valid_preference_example_passes():
    assert preference_errors(GOOD_PREF) == []


def test_epoch_heuristic():
    assert recommended_epochs(10) == 10          # 100 example-epochs at least
    assert recommended_epochs(3) == 25           # capped at 25 epochs
    assert recommended_epochs(1000) == 3         # the default
    assert recommended_epochs(20_000) == 1       # at most 25,000 example-epochs
    assert recommended_epochs(0) == 0


def _write(tmp_path, rows, name="f.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_lines_that_are_not_utf8_or_start_with_a_byte_order_mark_are_reported_by_line(tmp_path):
    good = json.dumps(GOOD_CHAT).encode()
    latin1 = json.dumps(msgs(U, {**A, "content": "Grüße"}), ensure_ascii=False).encode("latin-1")
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join([good] * 11 + [latin1, good]) + b"\r\n")
    d = validate_file(path).as_dict()
    assert d["examples"] == 13
    assert d["errors"] == {"byte_order_mark": 1, "not_utf8": 1}
    assert d["first_error_lines"] == {"byte_order_mark": 1, "not_utf8": 12}


def test_file_report_counts_errors_by_kind_with_lines_tokens_and_cost(tmp_path):
    rows = [GOOD_CHAT] * 12 + ["{broken", msgs(U), msgs(U, A, U), msgs(U, A)]
    report = validate_file(_write(tmp_path, rows), model="gpt-4o-mini-2024-07-18")
    d = report.as_dict()
    assert not report.ok
    assert d["errors"] == {"invalid_json": 1, "no_assistant_message": 1, "last_message_not_assistant": 1}
    assert d["first_error_lines"] == {"invalid_json": 13, "no_assistant_message": 14,
                                      "last_message_not_assistant": 15}
    assert d["warnings"] == {"missing_system_message": 1}
    assert d["tokens_per_example"]["max"] > d["tokens_per_example"]["min"] > 0
    assert d["epochs"] == 7  # 16 examples -> ceil(100 / 16); the guide floors to 6 and misses 100
    assert d["estimated_training_tokens"] == d["billing_tokens_per_epoch"] * 7
    assert d["estimated_cost_usd"] == round(d["estimated_training_tokens"] * 3.0 / 1e6, 2)


def test_file_needs_ten_examples_and_over_limit_is_a_warning(tmp_path):
    assert not validate_file(_write(tmp_path, [GOOD_CHAT] * 9)).ok
    long = chat_example(None, "x " * 20_000, "y")
    report = validate_file(_write(tmp_path, [GOOD_CHAT] * 10 + [long]), model="gpt-3.5-turbo-0125")
    assert report.ok and report.warnings["over_token_limit"] == 1
    assert report.as_dict()["billing_tokens_per_epoch"] <= 10 * 100 + 16_385


def test_preference_file_is_detected(tmp_path):
    report = validate_file(_write(tmp_path, [GOOD_PREF] * 10))
    assert (report.kind, report.ok) == ("preference", True)


def test_token_counts_use_the_models_encoding_offline():
    assert encoding_name_for_model("gpt-4o-mini-2024-07-18") == "o200k_base"
    assert encoding_name_for_model("ft:gpt-4.1-mini-2025-04-14:acme::x1") == "o200k_base"
    assert encoding_name_for_model("gpt-3.5-turbo-0125") == "cl100k_base"
    o200k, cl100k = counter_for_model("gpt-4o"), counter_for_model("gpt-4")
    assert o200k.exact and cl100k.exact
    # reference ids of "Hello, world!" in each encoding
    from flywheel_pipeline.core.tokens import _encoding
    assert _encoding("o200k_base").encode("Hello, world!") == [13225, 11, 2375, 0]
    assert _encoding("cl100k_base").encode("Hello, world!") == [9906, 11, 1917, 0]
    assert approximate_tokens("Hello, world!") == 4


# ---- PII ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Write to <ada.lovelace@acme.co.uk> today", "Write to [EMAIL] today"),
    ("mail ada [at] acme [dot] com please", "mail [EMAIL] please"),
    ("mail ada(at)acme.com or bob at corp dot io", "mail [EMAIL] or [EMAIL]"),
    ("Call +44 20 7946 0958", "Call [PHONE]"),
    ("Call (415) 555-0132 or 415.555.0132", "Call [PHONE] or [PHONE]"),
    ("Tel +1-415-555-0132, fax 0049 30 1234567", "Tel [PHONE], fax [PHONE]"),
    ("Ruf +49 (0)30 1234 5678 an", "Ruf [PHONE] an"),
    ("Appel +33 1 23 45 67 89", "Appel [PHONE]"),
    ("Link https://acme.example/l/msg-20260101-00001/0?t=deadbeef end", "Link [URL] end"),
    ("Link https://acme.example/u/3f9a8b7c6d5e4f3a2b1c end", "Link [URL] end"),
    ("Pricing at https://acme.example/pricing stays", "Pricing at https://acme.example/pricing stays"),
    ("On 2026-01-05 at 10:00 we cut $1,250.00 by 12.5 3.7 percent, order 1234567890123",
     "On 2026-01-05 at 10:00 we cut $1,250.00 by 12.5 3.7 percent, order 1234567890123"),
])
def test_redaction_of_tricky_cases(text, expected):
    assert redact(text).text == expected
    assert not contains_contact_pii(redact(text).text)


def test_names_become_merge_fields_and_merge_fields_are_never_touched():
    text = "Hi Ada, {{first_name}} and {{ company }} stay. Ada Lovelace met Jordan. Adam is not Ada."
    out = redact(text, first_name="Ada", last_name="Lovelace", sender_name="Jordan")
    assert out.text == ("Hi {{first_name}}, {{first_name}} and {{ company }} stay. {{first_name}} {{last_name}} "
                        "met {{sender_name}}. Adam is not {{first_name}}.")
    assert out.counts["name"] == 5
    assert redact("{{email}} {{phone_number}}").text == "{{email}} {{phone_number}}"


def test_contact_pii_detector_is_the_export_contract():
    assert contains_contact_pii("reach me at a@b.io")
    assert contains_contact_pii("call +44 20 7946 0958")
    assert not contains_contact_pii("Hi {{first_name}}, see https://acme.example/pricing")


# ---- CLI ---------------------------------------------------------------------------------

def _validate(*args):
    return subprocess.run([sys.executable, "-m", "flywheel_pipeline.cli", "validate", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_validate_exit_codes_and_report(tmp_path):
    good = _validate(str(_write(tmp_path, [GOOD_CHAT] * 10, "good.jsonl")))
    assert good.returncode == 0 and "VALID chat file, 10 examples" in good.stdout
    bad = _validate(str(_write(tmp_path, [GOOD_CHAT] * 10 + [msgs(U)], "bad.jsonl")))
    assert bad.returncode == 1
    assert "error no_assistant_message: 1 (first on line 11)" in bad.stdout
    as_json = json.loads(_validate(str(tmp_path / "bad.jsonl"), "--json").stdout)
    assert as_json["errors"] == {"no_assistant_message": 1}
    missing = _validate(str(tmp_path / "missing.jsonl"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
