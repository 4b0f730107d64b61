"""A printed summary of the warehouse (what `flywheel demo` and `flywheel summary` show)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flywheel_pipeline.core.label_policy import STAGES
from flywheel_pipeline.warehouse.schema import connect


def print_summary(database: Path, out: Callable[[str], None] = print) -> None:
    con = connect(database, read_only=True)
    try:
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("messages", "email_events", "crm_events", "replies", "reply_intents",
                            "outcome_labels", "quarantine")}
        lines, files = con.execute("SELECT coalesce(sum(lines), 0), count(*) FROM landing_files").fetchone()
        out("")
        out(f"Warehouse {database}")
        out(f"  landing files ingested: {files} ({lines} lines); quarantined lines: {counts['quarantine']}")
        out("  " + ", ".join(f"{t}: {n}" for t, n in counts.items() if t != "quarantine"))
        total, mature, mean = con.execute(
            "SELECT count(*), count(*) FILTER (is_mature), avg(quality_score) FROM outcome_labels").fetchone()
        out(f"  outcome labels: {total} ({mature} mature), mean quality score {mean or 0:.3f}")
        stages = dict(con.execute("SELECT stage, count(*) FROM outcome_labels GROUP BY 1").fetchall())
        out("  deepest stage reached:")
        for stage in STAGES:
            out(f"    {stage:<18} {stages.get(stage, 0):>8}")
        signals = con.execute("SELECT sum(machine_opens), sum(scanner_clicks), sum(auto_replies) "
                              "FROM outcome_labels").fetchone()
        out(f"  ignored as non-human: {signals[0] or 0} machine opens, {signals[1] or 0} scanner clicks, "
            f"{signals[2] or 0} auto-replies")
        out("  per model (mature labels only):")
        out(f"    {'model_id':<46} {'n':>6} {'score':>6} {'reply':>6} {'meet':>6} {'deals':>5}")
        for row in con.execute("""
                SELECT model_id, count(*), avg(quality_score), avg(replied::INT), avg(meeting_booked::INT),
                       count(*) FILTER (deal_closed)
                FROM outcome_labels WHERE is_mature GROUP BY 1 ORDER BY 3 DESC""").fetchall():
            out(f"    {str(row[0]):<46} {row[1]:>6} {row[2]:>6.3f} {row[3]:>6.3f} {row[4]:>6.3f} {row[5]:>5}")
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if "training_examples" in tables:
            ex = con.execute("SELECT count(*) FILTER (label), count(*) FILTER (NOT label), "
                             "count(*) FILTER (split = 'validation') FROM training_examples").fetchone()
            out(f"  training examples: {ex[0]} positives, {ex[1]} negatives ({ex[2]} in validation)")
        if "model_registry" in tables:
            out("  model registry:")
            for row in con.execute("SELECT family, version, status, model_id, dataset_version FROM model_registry "
                                   "ORDER BY created_at").fetchall():
                out(f"    {row[0]} v{row[1]} [{row[2]}] {row[3]} (dataset {row[4]})")
        if "preference_pairs" in tables:
            pairs = con.execute("SELECT count(*), count(DISTINCT context) FROM preference_pairs").fetchone()
            out(f"  preference pairs: {pairs[0]} in {pairs[1]} contexts")
    finally:
        con.close()
    exports = database.parent / "exports"
    if exports.is_dir():
        versions = sorted((p for p in exports.iterdir() if p.is_dir() and not p.name.startswith(".")),
                          key=lambda p: p.stat().st_mtime)
        for version in versions[-2:]:
            out(f"  export {version}: {', '.join(sorted(f.name for f in version.glob('*.jsonl')))}")
