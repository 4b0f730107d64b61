"""`flywheel replies eval` on the shipped set and on a user's own labelled file."""

from __future__ import annotations

import json
import re

from flywheel_pipeline.cli import main


def test_eval_prints_positive_and_per_intent_metrics_with_intervals(capsys):
    assert main(["replies", "eval"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^classifier cue_model:2\.\w+ on the shipped set \(measuring split\): \d+ replies", out, re.M)
    interval = r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \(\d+/\d+\)"
    assert re.search(rf"^positive precision {interval}", out, re.M), out
    assert re.search(rf"^positive recall    {interval}", out, re.M), out
    for intent in ("meeting_request", "interested", "not_now", "hostile", "wrong_person", "auto_reply"):
        assert re.search(rf"^{intent}\s+\d+\s+\d+\s+{interval}\s+{interval}", out, re.M), (intent, out)
    assert re.search(r"^[\d,]+ replies/s$", out, re.M)


def test_eval_any_classifier_on_a_users_file(tmp_path, capsys):
    rows = [{"id": "a", "text": "Sure, Tuesday at 3pm works for me.", "intent": "meeting_request"},
            {"id": "b", "text": "Not interested.\n\nOn Mon, Alex wrote:\n> Interested in a call?", "intent": "not_interested"},
            {"id": "c", "text": "Yes please!", "intent": "interested", "sentiment": "positive"}]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["replies", "eval", "--file", str(path), "--classifier", "rule_based", "--errors", "5"]) == 0
    out = capsys.readouterr().out
    assert f"classifier rule_based:1 on {path}: 3 replies" in out
    assert "positive recall    0.000 [0.000, 0.658] (0/2)" in out  # the old classifier misses both
    assert "a: meeting_request/positive -> other/neutral" in out
    assert main(["replies", "eval", "--file", str(path)]) == 0
    assert "positive recall    1.000 [0.342, 1.000] (2/2)" in capsys.readouterr().out


def test_eval_refuses_bad_files_and_unknown_classifiers(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "x", "intent": "yes"}\n', encoding="utf-8")
    assert main(["replies", "eval", "--file", str(bad)]) == 2
    assert "bad.jsonl:1: intent 'yes' is not one of" in capsys.readouterr().err
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"id": "a", "text": "ça", "intent": "other"}\n'.encode("latin-1"))
    assert main(["replies", "eval", "--file", str(latin)]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    assert main(["replies", "eval", "--file", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["replies", "eval", "--classifier", "gpt"]) == 2
    assert "unknown reply classifier 'gpt'" in capsys.readouterr().err
