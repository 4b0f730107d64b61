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
            {"id": "b", "text": "Not interested.\n\nOn Mon, Alex wrote:\n> Interested in a call?",
             "intent": "not_interested"},
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


def test_review_then_correct_lands_labels_that_override_the_classifier_and_change_labels(home, capsys,
                                                                                         monkeypatch):
    """The review loop end to end: replies in the warehouse, the least sure listed, a person's
    corrections landed, and the next classification and labelling take them."""
    from datetime import timedelta

    from flywheel_pipeline import paths
    from flywheel_pipeline.core.landing import write_jsonl
    from flywheel_pipeline.warehouse.ingest import ingest_source
    from flywheel_pipeline.warehouse.reply_intents import classify_new_replies, pipeline_classifier
    from flywheel_pipeline.warehouse.schema import open_configured
    from flywheel_pipeline_tests.conftest import T0, label, message, reply, run_pipeline

    monkeypatch.delenv("FLYWHEEL_LANDING", raising=False)
    landing = paths.landing_dir()
    texts = {"m1": "Sure, Tuesday at 3pm works for me.", "m2": "hmm, maybe", "m3": "Not interested, thanks."}
    write_jsonl(landing, "messages", [message(mid, lead=f"l-{mid}") for mid in texts], name="m.jsonl")
    write_jsonl(landing, "replies", [reply(f"r-{mid}", mid, T0 + timedelta(hours=1), t) for mid, t in texts.items()],
                name="r.jsonl")
    con = open_configured(read_only=False)
    run_pipeline(con, landing)
    assert not label(con, "m2")["positive_reply"]
    con.close()

    review = home / "review.jsonl"
    assert main(["replies", "review", "--below", "0.99", "--out", str(review)]) == 0
    listed = [json.loads(line) for line in review.read_text(encoding="utf-8").splitlines()]
    assert "r-m2" in [row["id"] for row in listed]
    assert [row["confidence"] for row in listed] == sorted(row["confidence"] for row in listed)
    # the reviewer says r-m2 is a yes, and confirms the rest as they are
    for row in listed:
        if row["id"] == "r-m2":
            row["intent"], row["sentiment"] = "interested", "positive"
    review.write_text("".join(json.dumps(row) + "\n" for row in listed), encoding="utf-8")
    capsys.readouterr()
    assert main(["replies", "correct", str(review), "--by", "ada"]) == 0
    assert f"{len(listed)} reviewed labels landed" in capsys.readouterr().out
    assert main(["replies", "correct", str(review)]) == 0  # the same file again: same label ids

    con = open_configured(read_only=False)
    ingested = ingest_source(con, landing, "reply_labels")
    assert ingested.accepted == len(listed) and ingested.duplicates == len(listed)
    classifier = pipeline_classifier(con)
    assert classifier.version != make_default_version()  # the model learnt from the reviewed replies
    result = classify_new_replies(con, classifier)
    assert result.reviewed == len(listed)
    row = con.execute("SELECT intent, sentiment, confidence, classifier FROM reply_intents WHERE reply_id = 'r-m2'"
                      ).fetchone()
    assert row == ("interested", "positive", 1.0, "human")
    from flywheel_pipeline.warehouse.labels import refresh_labels

    run = refresh_labels(con, as_of=T0 + timedelta(days=30))
    assert label(con, "m2")["positive_reply"] and label(con, "m1")["positive_reply"]
    assert run.touched_messages == 1  # only m2's reply changed; confirmed ones keep their labels
    # a second pass changes nothing: the reviewed rows stay human, and no label is touched
    again = classify_new_replies(con, classifier)
    assert (again.classified, again.reclassified) == (0, 0)
    assert refresh_labels(con, as_of=T0 + timedelta(days=30)).touched_messages == 0
    con.close()


def make_default_version() -> str:
    from flywheel_pipeline.core.reply_cue_model import CueModelReplyClassifier

    return CueModelReplyClassifier().version


def test_correct_refuses_a_bad_file(tmp_path, home, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "r1", "text": "x", "intent": "yes please"}\n', encoding="utf-8")
    assert main(["replies", "correct", str(bad)]) == 2
    assert "intent 'yes please'" in capsys.readouterr().err
    assert main(["replies", "review"]) == 1  # no warehouse yet
    assert "no warehouse" in capsys.readouterr().err


def test_reply_labels_lines_are_checked_at_ingestion(con, tmp_path):
    from flywheel_pipeline.core.landing import write_jsonl
    from flywheel_pipeline.warehouse.ingest import ingest_source

    landing = tmp_path / "landing"
    good = {"label_id": "l1", "reply_id": "r1", "intent": "not_now", "sentiment": "neutral",
            "labelled_at": "2026-03-02T10:00:00Z"}
    write_jsonl(landing, "reply_labels", [good, {**good, "label_id": "l2", "intent": "yes"},
                                          {**good, "label_id": "l3", "sentiment": "happy"},
                                          {**good, "label_id": "l4", "labelled_at": "soon"},
                                          {**good, "label_id": ""}], name="x.jsonl")
    result = ingest_source(con, landing, "reply_labels")
    assert (result.accepted, result.quarantined) == (1, 4)
    reasons = sorted(r for (r,) in con.execute("SELECT reason FROM quarantine").fetchall())
    assert reasons == ["invalid labelled_at: not an ISO 8601 timestamp", "missing label_id",
                       "unknown intent: yes", "unknown sentiment: happy"]
