"""reply_intents in the warehouse: each row keeps classifier, version and confidence; a new
classifier or version re-classifies, and labels change only for the messages whose reply
changed."""

from __future__ import annotations

from datetime import timedelta

from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.core.reply_classifier import ReplyIntent, RuleBasedReplyClassifier
from flywheel_pipeline.core.reply_cue_model import CueModelReplyClassifier
from flywheel_pipeline.warehouse.labels import refresh_labels
from flywheel_pipeline.warehouse.reply_intents import classify_new_replies
from flywheel_pipeline.warehouse.schema import SCHEMA_VERSION, connect
from flywheel_pipeline_tests.conftest import T0, as_schema_4, label, message, reply, run_pipeline
from flywheel_pipeline_tests.domains import only_assets_of

REPLIES = {
    "m1": "Sure, Tuesday at 3pm works for me.",             # rule_based: other; cue_model: meeting_request
    "m2": "Not interested, thanks.",                        # both: not_interested
    "m3": "Yes please!",                                    # rule_based: other; cue_model: interested
    "m4": "Please remove me from your list.",               # both: unsubscribe_request
}


def _world(landing):
    write_jsonl(landing, "messages", [message(mid, lead=f"lead-{mid}") for mid in REPLIES], name="m.jsonl")
    write_jsonl(landing, "replies", [reply(f"r-{mid}", mid, T0 + timedelta(hours=2), text)
                                     for mid, text in REPLIES.items()], name="r.jsonl")


class _Renamed:
    """A classifier that answers like another but carries a different version."""

    def __init__(self, inner, version):
        self.inner, self.name, self.version = inner, inner.name, version

    def classify(self, **kwargs) -> ReplyIntent:
        return self.inner.classify(**kwargs)


def test_rows_keep_classifier_version_and_confidence(con, landing):
    _world(landing)
    run_pipeline(con, landing)
    rows = con.execute("SELECT DISTINCT classifier, classifier_version FROM reply_intents").fetchall()
    assert rows == [("cue_model", CueModelReplyClassifier().version)]
    confidences = [c for (c,) in con.execute("SELECT confidence FROM reply_intents").fetchall()]
    assert len(confidences) == 4 and all(0.0 < c <= 1.0 for c in confidences)
    assert label(con, "m3")["positive_reply"] and label(con, "m1")["positive_reply"]


def test_a_new_classifier_relabels_only_the_messages_whose_reply_changed(con, landing):
    _world(landing)
    run_pipeline(con, landing)
    assert classify_new_replies(con).classified == 0  # same classifier and version: nothing to do
    before = {mid: label(con, mid) for mid in REPLIES}

    switched = classify_new_replies(con, RuleBasedReplyClassifier())
    assert (switched.classified, switched.reclassified) == (0, 4)
    changed = {mid for (mid,) in con.execute(
        f"SELECT message_id FROM reply_intents WHERE batch_id = {switched.batch_id}").fetchall()}
    assert changed == {"m1", "m3"} and switched.changed == 2  # m2 and m4 answer the same
    run = refresh_labels(con, as_of=T0 + timedelta(days=30))
    assert not run.full_relabel and run.touched_messages == 2
    after = {mid: label(con, mid) for mid in REPLIES}
    assert not after["m1"]["positive_reply"] and not after["m3"]["positive_reply"]
    for mid in ("m2", "m4"):
        assert after[mid]["label_run_id"] == before[mid]["label_run_id"]  # not relabelled
    assert con.execute("SELECT DISTINCT classifier, classifier_version FROM reply_intents").fetchall() == \
        [("rule_based", "1")]

    # the same classifier under a new version: re-classified, nothing changes, no label touched
    bumped = classify_new_replies(con, _Renamed(RuleBasedReplyClassifier(), "1.1"))
    assert (bumped.reclassified, bumped.changed) == (4, 0)
    assert refresh_labels(con, as_of=T0 + timedelta(days=30)).touched_messages == 0
    assert con.execute("SELECT DISTINCT classifier_version FROM reply_intents").fetchall() == [("1.1",)]


def test_a_schema_2_warehouse_gets_its_classifier_version_split_out(tmp_path, landing):
    db = tmp_path / "w.duckdb"
    con = connect(db)
    _world(landing)
    run_pipeline(con, landing)
    # what schema 2 stored: "name:version" in classifier, no classifier_version column
    as_schema_4(con)
    con.execute("ALTER TABLE reply_intents DROP COLUMN classifier_version")
    con.execute("UPDATE reply_intents SET classifier = 'rule_based:1'")
    con.execute("UPDATE schema_info SET value = '2' WHERE key = 'schema_version'")
    con.close()
    con = connect(db)
    version = con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)
    assert con.execute("SELECT DISTINCT classifier, classifier_version FROM reply_intents").fetchall() == \
        [("rule_based", "1")]
    # the default classifier is not rule_based:1, so the next run re-classifies every reply
    assert classify_new_replies(con).reclassified == 4
    con.close()


def test_the_reply_intents_asset_takes_its_classifier_from_config_and_lands_reviewed_labels(tmp_path):
    """Through Dagster: the default classifier, then rule_based by run config (re-classifying
    and relabelling), then a reviewed label landed in reply_labels overriding it."""
    import dagster as dg

    from flywheel_pipeline.defs.resources import LabelPolicyResource, LandingZoneResource, WarehouseResource

    landing = tmp_path / "landing"
    _world(landing)
    resources = {"warehouse": WarehouseResource(database=str(tmp_path / "wh.duckdb")),
                 "landing": LandingZoneResource(path=str(landing)), "label_policy": LabelPolicyResource()}

    def run(**reply_config):
        with dg.instance_for_test() as instance:
            ops = {"reply_intents": {"config": reply_config},
                   "outcome_labels": {"config": {"as_of": "2026-04-01T00:00:00Z"}}}
            result = dg.materialize(only_assets_of("ingest", "outcomes"), instance=instance, resources=resources,
                                    run_config={"ops": ops})
            assert result.success
            events = [e for e in result.get_asset_materialization_events()
                      if e.asset_key.to_user_string() == "reply_intents"]
            return events[0].materialization.metadata

    first = run()
    assert first["classifier"].value.startswith("cue_model:2.") and first["classified_now"].value == 4
    switched = run(classifier="rule_based")
    assert switched["classifier"].value == "rule_based:1"
    assert (switched["reclassified_now"].value, switched["changed_by_reclassifying"].value) == (4, 2)
    write_jsonl(landing, "reply_labels", [{"label_id": "L1", "reply_id": "r-m3", "intent": "interested",
                                           "sentiment": "positive", "labelled_at": "2026-03-03T00:00:00Z"}],
                name="review.jsonl")
    reviewed = run(classifier="rule_based")
    assert reviewed["set_from_reviewed_labels_now"].value == 1
    con = connect(tmp_path / "wh.duckdb")
    assert con.execute("SELECT classifier, classifier_version, intent FROM reply_intents WHERE reply_id = 'r-m3'"
                       ).fetchone() == ("human", "L1", "interested")
    assert label(con, "m3")["positive_reply"]
    con.close()
