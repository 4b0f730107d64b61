"""A printed summary of the warehouse (what `flywheel demo` and `flywheel summary` show)."""

from __future__ import annotations

from collections.abc import Callable

from flywheel_pipeline import paths
from flywheel_pipeline.cli.output import columns
from flywheel_pipeline.core.label_policy import STAGES
from flywheel_pipeline.warehouse.lake import describe
from flywheel_pipeline.warehouse.schema import open_configured


def print_summary(out: Callable[[str], None] = print) -> None:
    con = open_configured(read_only=True)
    try:
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("messages", "email_events", "crm_events", "replies", "reply_intents",
                            "outcome_labels", "quarantine")}
        lines, files = con.execute("SELECT coalesce(sum(lines), 0), count(*) FROM landing_files").fetchone()
        out("")
        out(f"Warehouse {describe(paths.warehouse_database())}")
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
        per_model = con.execute("""
                SELECT model_id, count(*), avg(quality_score), avg(replied::INT), avg(meeting_booked::INT),
                       count(*) FILTER (deal_closed)
                FROM outcome_labels WHERE is_mature GROUP BY 1 ORDER BY 3 DESC""").fetchall()
        for line in columns(["model_id", "n", "score", "reply", "meet", "deals"],
                            [(str(m), n, f"{s:.3f}", f"{r:.3f}", f"{b:.3f}", d) for m, n, s, r, b, d in per_model],
                            indent="    "):
            out(line)
        for note in model_notes(str(row[0]) for row in per_model):
            out(f"    {note}")
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
    exports = paths.exports_dir()
    if exports.is_dir():
        versions = sorted((p for p in exports.iterdir() if p.is_dir() and not p.name.startswith(".")),
                          key=lambda p: p.stat().st_mtime)
        for version in versions[-2:]:
            out(f"  export {version}: {', '.join(sorted(f.name for f in version.glob('*.jsonl')))}")


def model_notes(model_ids) -> list[str]:
    """One line on each kind of model id a reader of the demo cannot place: the SANDBOX
    backend's models, and the demo world's own fine-tuned model."""
    from flywheel_pipeline.simulator import DEFAULT_MODELS

    ids = set(model_ids)
    world = sorted(m.model_id for m in DEFAULT_MODELS if m.model_id.startswith("ft:") and m.model_id in ids)
    notes = [f"{model}: a model of the simulated world (its outreach app's earlier fine-tune, sending until "
             "routing.json took over), not one trained here" for model in world]
    if any(i.startswith("sandbox:") for i in ids):
        notes.append("sandbox:...: a model the SANDBOX fine-tuning backend \"trained\" (nothing was trained; "
                     "the id names base model, method and dataset)")
    return notes
