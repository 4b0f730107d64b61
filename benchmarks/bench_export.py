"""Benchmark: fine-tuning export against DuckDB's own COPY ... TO json.

Builds N labelled, redacted training examples (default 1M) in a DuckDB warehouse, then, in
the same run and each phase in its own process:

  copy_json   COPY (SELECT system_prompt, user_prompt, assistant FROM training_examples) TO '...json'
  export_sft  the product's export (warehouse/datasets.py export_jsonl, SFT chat format, both splits,
              content hash and manifest)

and prints examples/s for both and the ratio (target: export <= 2x the COPY time).

    python benchmarks/bench_export.py                 # 1M examples
    python benchmarks/bench_export.py --examples 200000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phase_runner import best_of, run_phase  # noqa: E402  (this directory)
from flywheel_pipeline.warehouse.datasets import export_jsonl  # noqa: E402
from flywheel_pipeline.warehouse.schema import connect  # noqa: E402


def generate(db: Path, n: int) -> None:
    con = connect(db)
    con.execute(f"""
        CREATE TABLE training_examples AS
        SELECT 'msg-' || lpad(i::VARCHAR, 10, '0') AS message_id, i AS message_key, 'org-' || (i % 5) AS organization_id,
               'lead-' || (i // 2) AS lead_id, 'cold_email' AS task_type, 'AIDA' AS framework,
               TIMESTAMP '2026-01-01' + to_seconds(i) AS sent_at, 0.6 + (i % 40) / 100 AS quality_score,
               'meeting_booked' AS stage,
               'You write concise, honest B2B outreach emails. Never invent facts. Use the AIDA framework.'
                   AS system_prompt,
               'Write a cold email to {{{{first_name}}}}, VP sales at a saas company number ' || i || '.' AS user_prompt,
               'Subject: quick question ' || i || chr(10) || chr(10) || 'Hi {{{{first_name}}}},' || chr(10) ||
               'Teams like yours use us to see which outreach books meetings. Worth a call? ' ||
               repeat('We help with pipeline visibility. ', 1 + i % 5) || chr(10) || 'Best, {{{{sender_name}}}}'
                   AS assistant,
               md5(i::VARCHAR) AS dedupe_key, 'saas' AS industry, 'vp_sales' AS lead_role,
               CASE WHEN hash(i) % 10 = 0 THEN 'validation' ELSE 'train' END AS split, true AS label
        FROM range({n}) t(i)""")
    con.execute("CHECKPOINT")
    con.close()


def phase(db: Path, name: str, out: Path) -> dict:
    con = connect(db)
    started = time.perf_counter()
    if name == "copy_json":
        target = out / "copy.json"
        con.execute(f"COPY (SELECT system_prompt, user_prompt, assistant FROM training_examples WHERE label) "
                    f"TO '{target}' (FORMAT json)")
        size = target.stat().st_size
    else:
        result = export_jsonl(con, out / "exports", ["sft"])
        size = sum(p.stat().st_size for p in result.files.values())
    seconds = time.perf_counter() - started
    rows = con.execute("SELECT count(*) FROM training_examples WHERE label").fetchone()[0]
    con.close()
    return {"phase": name, "seconds": seconds, "rows": rows, "bytes": size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="keep the best of this many runs per phase")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(Path(args.db), args.phase, Path(args.out))))
        return 0
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-export-") as tmp:
        db = Path(tmp) / "bench.duckdb"
        t = time.perf_counter()
        generate(db, args.examples)
        print(f"generated {args.examples:,} examples in {time.perf_counter() - t:.1f}s", flush=True)
        best = {}
        for name in ("copy_json", "export_sft"):
            runs = []
            for k in range(args.repeat):
                out = Path(tmp) / f"{name}-{k}"
                out.mkdir()
                runs.append(run_phase(__file__, name, "--db", str(db), "--out", str(out)))
            best[name] = best_of(runs)
    for r in best.values():
        print(f"{r['phase']:<11} {r['seconds']:7.2f} s  {r['rows'] / r['seconds']:>10,.0f} examples/s  "
              f"{r['bytes'] / 2**20:7.1f} MiB")
    ratio = best["export_sft"]["seconds"] / best["copy_json"]["seconds"]
    print(f"\nexport / COPY TO json: {ratio:.2f}x (target <= 2x)  {'OK' if ratio <= 2 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
