"""Labelling rules, end to end through real DuckDB files (ingest -> classify -> label)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest

from flywheel_pipeline.core.label_policy import LabelPolicy
from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.warehouse.labels import count_click_paths, render_label_sql
from flywheel_pipeline_tests.conftest import T0, crm, label, message, reply, run_pipeline, sg

S = timedelta(seconds=1)
H = timedelta(hours=1)
D = timedelta(days=1)


def land(landing, source, records):
    return write_jsonl(landing, source, records)


def delivered(mid, at=T0 + 10 * S):
    return sg(mid, "delivered", at)


def test_machine_open_is_not_an_open(con, landing):
    land(landing, "messages", [message("m1"), message("m2")])
    land(landing, "sendgrid", [delivered("m1"), sg("m1", "open", T0 + 60 * S, sg_machine_open=True),
                               delivered("m2"), sg("m2", "open", T0 + 2 * H, sg_machine_open=False)])
    run_pipeline(con, landing)
    m1, m2 = label(con, "m1"), label(con, "m2")
    assert (m1["opened"], m1["machine_opens"], m1["stage"], m1["quality_score"]) == (False, 1, "delivered", 0.1)
    assert (m2["opened"], m2["stage"], m2["quality_score"]) == (True, "opened", 0.2)


def test_scanner_clicks_are_not_clicks(con, landing):
    land(landing, "messages", [message("early"), message("burst", body="a https://x.example/1 https://x.example/2 "
                                                                      "https://x.example/3"),
                               message("human")])
    d = T0 + 10 * S
    land(landing, "sendgrid", [
        delivered("early", d), sg("early", "click", d + 3 * S, url="https://x.example/a"),
        # all three links clicked within one second, long after delivery: a scanner
        delivered("burst", d),
        *[sg("burst", "click", d + 5 * H, url=f"https://x.example/{k}") for k in (1, 2, 3)],
        delivered("human", d), sg("human", "click", d + 2 * H, url="https://x.example/a"),
    ])
    run_pipeline(con, landing)
    assert (label(con, "early")["clicked"], label(con, "early")["scanner_clicks"]) == (False, 1)
    assert (label(con, "burst")["clicked"], label(con, "burst")["scanner_clicks"]) == (False, 3)
    human = label(con, "human")
    assert (human["clicked"], human["stage"], human["quality_score"]) == (True, "clicked", 0.3)


def test_scanner_click_rule_needs_the_delivery_time_even_when_it_arrives_later(con, landing):
    land(landing, "messages", [message("m1")])
    land(landing, "sendgrid", [sg("m1", "click", T0 + 12 * S, url="https://x.example/a")])
    run_pipeline(con, landing)
    assert label(con, "m1")["clicked"] is True  # no delivery seen yet: cannot call it a scanner
    land(landing, "sendgrid", [delivered("m1", T0 + 10 * S)])  # the delivered event arrives late
    run_pipeline(con, landing)
    assert label(con, "m1")["clicked"] is False


def test_per_message_click_shortcut_agrees_with_the_per_second_analysis(con, landing):
    """Most messages are classified from per-message click aggregates, the rest by second and
    link. Random click patterns around the scanner window (same and different seconds and
    links, bursts at one instant, clicks at the window's edge, clicks without a URL, before
    and without a delivery, one to three tracked links) must get the same labels both ways."""
    rng = random.Random(7)
    links = [f"https://x.example/{k}" for k in range(3)]
    messages, events, clicks_per_message = [], [], []
    for i in range(400):
        mid = f"m{i}"
        tracked = rng.choice((1, 2, 2, 3))
        messages.append(message(mid, body="see " + " ".join(links[:tracked])))
        d = T0 + rng.randrange(0, 30) * S + timedelta(milliseconds=rng.choice((0, rng.randrange(1000))))
        if rng.random() < 0.85:
            events.append(sg(mid, "delivered", d, timestamp=d.timestamp()))
        n = rng.choice((0, 1, 2, 2, 2, 3, 4))
        clicks_per_message.append(n)
        second = d + rng.choice((-1, 3, 4, 5, 6, 3600)) * S  # around d + 5 s, or much later
        burst = rng.random() < 0.3  # a scanner: every click at one instant, links in turn
        for k in range(n):
            at = second if burst else (second + rng.choice((0, 0, 1, 2)) * S
                                       + timedelta(milliseconds=rng.choice((0, rng.randrange(1000)))))
            link = links[k % tracked] if burst else rng.choice(links[:tracked])
            url = {} if rng.random() < 0.1 else {"url": link}
            events.append(sg(mid, "click", at, timestamp=at.timestamp(), **url))
    # and one case spelled out: three clicks within one second across the window's end
    messages.append(message("edge", body="see " + " ".join(links)))
    d = T0 + 10.5 * S
    events.append(sg("edge", "delivered", d, timestamp=d.timestamp()))
    for ms, url in ((4700, {"url": links[0]}), (4900, {"url": links[1]}), (5300, {})):
        at = d + timedelta(milliseconds=ms)
        events.append(sg("edge", "click", at, timestamp=at.timestamp(), **url))
    land(landing, "messages", messages)
    land(landing, "sendgrid", events)
    run_pipeline(con, landing)
    assert (label(con, "edge")["clicked"], label(con, "edge")["scanner_clicks"]) == (True, 2)
    as_of = datetime(2026, 4, 1)
    shortcut, general = (sorted(con.execute(render_label_sql(LabelPolicy(), 99, as_of, scoped=False,
                                                             fast_clicks=fast)).fetchall())
                         for fast in (True, False))
    assert shortcut == general
    counts = con.execute("SELECT sum(clicked::INT), sum(scanner_clicks) FROM message_labels").fetchone()
    assert counts[0] > 50 and counts[1] > 100  # both kinds of click occur
    assert sum(n > 2 for n in clicks_per_message) > 50 and sum(0 < n <= 2 for n in clicks_per_message) > 100
    paths = count_click_paths(con)  # both ways were taken
    assert paths["shortcut"] > 150 and paths["per_second"] > 30, paths


def test_bounce_after_delivered_means_not_delivered_and_event_time_not_arrival_decides(con, landing):
    land(landing, "messages", [message("late_bounce"), message("retry_ok")])
    # arrival order is the reverse of event time in both cases
    land(landing, "sendgrid", [sg("late_bounce", "bounce", T0 + 60 * S, type="bounce"),
                               delivered("retry_ok", T0 + 90 * S)])
    land(landing, "sendgrid", [delivered("late_bounce", T0 + 10 * S),
                               sg("retry_ok", "bounce", T0 + 20 * S, type="blocked")])
    run_pipeline(con, landing)
    lb, ok = label(con, "late_bounce"), label(con, "retry_ok")
    assert (lb["delivered"], lb["bounced"], lb["stage"], lb["quality_score"], lb["is_terminal"]) == \
        (False, True, "bounced", 0.1, True)
    assert (ok["delivered"], ok["bounced"], ok["stage"]) == (True, False, "delivered")


def test_auto_replies_are_not_replies_and_sentiment_is_classified(con, landing):
    land(landing, "messages", [message("ooo"), message("pos"), message("neg")])
    land(landing, "sendgrid", [delivered("ooo"), delivered("pos"), delivered("neg")])
    land(landing, "replies", [
        reply("r1", "ooo", T0 + H, "I am out of the office", {"Auto-Submitted": "auto-replied"}),
        reply("r2", "ooo", T0 + H, "Away", {"precedence": "bulk"}),
        reply("r3", "pos", T0 + 2 * H, "Sounds great, let's set up a call next week."),
        reply("r4", "neg", T0 + 2 * H, "Not interested, thanks."),
    ])
    run_pipeline(con, landing)
    ooo, pos, neg = label(con, "ooo"), label(con, "pos"), label(con, "neg")
    assert (ooo["replied"], ooo["auto_replies"], ooo["stage"]) == (False, 2, "delivered")
    assert (pos["replied"], pos["reply_sentiment"], pos["positive_reply"], pos["quality_score"]) == \
        (True, "positive", True, 0.6)
    assert (neg["replied"], neg["reply_sentiment"], neg["positive_reply"], neg["quality_score"]) == \
        (True, "negative", False, 0.4)


@pytest.mark.parametrize("value, expected", [(50_000, 1.0), (120_000, 1.0), (25_000, 0.95), (0, 0.9)])
def test_closed_deal_scores_with_value_bonus(con, landing, value, expected):
    land(landing, "messages", [message("m1")])
    land(landing, "sendgrid", [delivered("m1")])
    land(landing, "crm", [crm("c1", "meeting_booked", T0 + 2 * D, message_id="m1"),
                          crm("c2", "meeting_completed", T0 + 5 * D, message_id="m1"),
                          {**crm("c3", "deal_closed", T0 + 40 * D, message_id="m1"), "deal_value": value}])
    run_pipeline(con, landing, as_of=T0 + 50 * D)
    row = label(con, "m1")
    assert (row["deal_closed"], row["deal_value"], row["quality_score"], row["is_mature"]) == \
        (True, value, expected, True)


def test_meeting_stages(con, landing):
    land(landing, "messages", [message("b"), message("c")])
    land(landing, "crm", [crm("c1", "meeting_booked", T0 + D, message_id="b"),
                          crm("c2", "meeting_completed", T0 + D, message_id="c")])
    run_pipeline(con, landing)
    assert (label(con, "b")["quality_score"], label(con, "b")["meeting_completed"]) == (0.7, False)
    c = label(con, "c")
    assert (c["quality_score"], c["meeting_booked"], c["meeting_completed"]) == (0.8, True, True)


def test_deal_lost_after_won_by_event_time(con, landing):
    land(landing, "messages", [message("m1")])
    land(landing, "crm", [crm("lost", "deal_lost", T0 + 20 * D, message_id="m1")])
    land(landing, "crm", [{**crm("won", "deal_closed", T0 + 10 * D, message_id="m1"), "deal_value": 1000}])
    run_pipeline(con, landing)
    row = label(con, "m1")
    assert (row["deal_closed"], row["deal_lost"], row["deal_value"], row["is_terminal"]) == (False, True, None, True)


def test_spam_and_unsubscribe_score_zero_but_a_later_meeting_outranks_an_unsubscribe(con, landing):
    land(landing, "messages", [message("spam"), message("unsub"), message("unsub_then_meeting")])
    land(landing, "sendgrid", [
        delivered("spam"), sg("spam", "open", T0 + H), sg("spam", "spamreport", T0 + 2 * H),
        delivered("unsub"), sg("unsub", "open", T0 + H), sg("unsub", "unsubscribe", T0 + 2 * H),
        delivered("unsub_then_meeting"), sg("unsub_then_meeting", "group_unsubscribe", T0 + 2 * H)])
    land(landing, "replies", [reply("r1", "unsub", T0 + 90 * 60 * S, "Sounds great, tell me more")])
    land(landing, "crm", [crm("c1", "meeting_booked", T0 + 3 * D, message_id="unsub_then_meeting")])
    run_pipeline(con, landing, as_of=T0 + D)
    spam, unsub, met = label(con, "spam"), label(con, "unsub"), label(con, "unsub_then_meeting")
    assert (spam["spam_reported"], spam["quality_score"], spam["is_mature"]) == (True, 0.0, True)
    assert (unsub["unsubscribed"], unsub["positive_reply"], unsub["quality_score"]) == (True, True, 0.0)
    assert (met["unsubscribed"], met["meeting_booked"], met["quality_score"]) == (True, True, 0.7)


def test_maturity_follows_the_clock_and_terminal_states(con, landing):
    land(landing, "messages", [message("old", sent=T0 - 20 * D), message("young", sent=T0 - 2 * D),
                               message("young_bounced", sent=T0 - 2 * D)])
    land(landing, "sendgrid", [sg("young_bounced", "bounce", T0 - 2 * D + 5 * S)])
    run_pipeline(con, landing, as_of=T0)
    assert [label(con, m)["is_mature"] for m in ("old", "young", "young_bounced")] == [True, False, True]
    # nothing new lands; only the clock moves
    result = run_pipeline(con, landing, as_of=T0 + 13 * D)
    assert result["labels"].touched_messages == 0
    assert label(con, "young")["is_mature"] is True
    assert run_pipeline(con, landing, as_of=T0, policy=LabelPolicy(maturity_days=30))["labels"].policy_changed
    assert label(con, "old")["is_mature"] is False


@pytest.mark.both_backends
def test_late_events_update_old_labels_and_only_touched_messages_are_relabelled(con, landing):
    land(landing, "messages", [message(f"m{i}", lead=f"lead-{i}") for i in range(20)])
    land(landing, "sendgrid", [delivered(f"m{i}") for i in range(20)])
    first = run_pipeline(con, landing)["labels"]
    assert (first.full_relabel, first.touched_messages) == (True, 20)
    assert label(con, "m3")["quality_score"] == 0.1
    land(landing, "crm", [{**crm("won", "deal_closed", T0 + 60 * D, lead_id="lead-3"), "deal_value": 50_000}])
    second = run_pipeline(con, landing, as_of=T0 + 70 * D)["labels"]
    assert (second.full_relabel, second.touched_messages, second.folded_events) == (False, 1, 0)
    row = label(con, "m3")
    assert (row["deal_closed"], row["quality_score"]) == (True, 1.0)


@pytest.mark.both_backends
def test_crm_and_reply_attribution_without_message_id(con, landing):
    land(landing, "messages", [message("first", lead="L", sent=T0), message("second", lead="L", sent=T0 + 5 * D),
                               message("other", lead="M", sent=T0)])
    land(landing, "crm", [
        crm("c-lead", "meeting_booked", T0 + 6 * D, lead_id="L"),            # latest earlier -> second
        crm("c-email", "meeting_booked", T0 + 1 * D, email="M@ACME.example"),  # case-insensitive email
        crm("c-too-late", "meeting_booked", T0 + 200 * D, lead_id="M"),       # outside the window
        crm("c-unknown", "meeting_booked", T0 + D, lead_id="nobody"),
    ])
    land(landing, "replies", [reply("r1", None, T0 + 2 * H, "Tell me more", from_email="L@acme.example")])
    run_pipeline(con, landing, as_of=T0 + 30 * D)
    rows = dict(con.execute("SELECT event_id, message_id FROM crm_events").fetchall())
    assert rows == {"c-lead": "second", "c-email": "other", "c-too-late": None, "c-unknown": None}
    assert con.execute("SELECT message_id, attribution FROM replies").fetchone() == ("first", "from_email")
    assert label(con, "second")["meeting_booked"] and label(con, "first")["positive_reply"]
    assert not label(con, "first")["meeting_booked"]


@pytest.mark.both_backends
def test_events_before_their_message_wait_and_label_once_it_lands(con, landing):
    land(landing, "sendgrid", [delivered("m1"), sg("m1", "open", T0 + H)])
    land(landing, "crm", [crm("c1", "meeting_booked", T0 + D, lead_id="lead-1")])
    run_pipeline(con, landing)
    assert con.execute("SELECT count(*) FROM outcome_labels").fetchone()[0] == 0
    land(landing, "messages", [message("m1")])
    run_pipeline(con, landing)
    row = label(con, "m1")
    assert (row["opened"], row["meeting_booked"], row["quality_score"]) == (True, True, 0.7)


def test_policy_is_configurable_and_a_change_relabels_everything(con, landing):
    land(landing, "messages", [message("m1")])
    land(landing, "sendgrid", [delivered("m1"), sg("m1", "open", T0 + H)])
    run_pipeline(con, landing)
    assert label(con, "m1")["quality_score"] == 0.2
    scores = dict(LabelPolicy().stage_scores, opened=0.25)
    result = run_pipeline(con, landing, policy=LabelPolicy(stage_scores=scores))["labels"]
    assert result.policy_changed and result.touched_messages == 1
    assert label(con, "m1")["quality_score"] == 0.25
