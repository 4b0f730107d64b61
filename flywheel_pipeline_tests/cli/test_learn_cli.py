"""``flywheel learn --as-of``: through Dagster on a small simulated world, the learn tables are
measured as of that time (messages sent within the maturity window before it are not mature in
cost_analysis), the story says what was judged, costed and found, and the labels are back to now
afterwards (every message is mature against the current time)."""

from __future__ import annotations

from datetime import date, datetime

from flywheel_pipeline.cli import main
from flywheel_pipeline.simulator.world import SimConfig, simulate
from flywheel_pipeline.warehouse.schema import connect


def test_learn_as_of_measures_then_puts_the_labels_back_to_now(home, capsys):
    simulate(home / "landing", SimConfig(seed=3, days=20, end=date(2026, 3, 30), organizations=1,
                                         leads_per_org=300, messages_per_day=40, feedback_rate=0.0))
    assert main(["learn", "--as-of", "2026-03-31T00:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert "judged" in out and "cost:" in out and "outcome drivers:" in out
    assert "labels back to now" in out
    con = connect(home / "warehouse.duckdb", read_only=True)
    try:
        messages = con.execute("SELECT count(*) FROM messages").fetchone()[0]
        judged = con.execute("SELECT count(DISTINCT message_key) FROM message_judgements").fetchone()[0]
        as_of_mature = con.execute("SELECT sum(mature_messages) FROM cost_analysis").fetchone()[0]
        now_mature = con.execute("SELECT count(*) FILTER (is_mature) FROM message_labels").fetchone()[0]
        runs = [r[0] for r in con.execute("SELECT as_of FROM label_runs ORDER BY label_run_id").fetchall()]
    finally:
        con.close()
    assert messages > 0 and judged > 0
    assert 0 < as_of_mature < messages  # the last days' messages were not mature on 2026-03-31
    assert now_mature == messages  # twenty days later than their maturity window: all mature now
    assert runs[-2] == datetime(2026, 3, 31) and runs[-1] > datetime(2026, 12, 1)
