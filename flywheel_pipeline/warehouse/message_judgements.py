"""Judging every delivered message once per judge and criteria version (table
``message_judgements``). Incremental: only messages without a judgement of their judge's current
version are read; a text already judged under the same judge and version (same content hash:
subject, body and prompts) is copied, not scored again. Streams in batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import pandas as pd

from flywheel_pipeline.core.message_scorers import GENERIC, SCORERS, TASK_FAMILIES, MessageText, judge_message
from flywheel_pipeline.warehouse.schema import transaction

_CONTENT_HASH = ("sha256(concat_ws(chr(31), coalesce(m.subject, ''), coalesce(m.body, ''), "
                 "coalesce(m.system_prompt, ''), coalesce(m.user_prompt, '')))")


@dataclass
class JudgeRun:
    judged: int = 0  # scored now
    reused: int = 0  # copied from the same text judged before under the same judge and version
    by_judge: dict[str, int] = field(default_factory=dict)


def judge_new_messages(con: duckdb.DuckDBPyConnection, *, batch_size: int = 5_000,
                       progress: Callable[[str], None] | None = None) -> JudgeRun:
    """Score every delivered message that has no heuristic judgement of its family's current
    version (unknown task types: the generic scorer)."""
    run = JudgeRun()
    families = pd.DataFrame(list(TASK_FAMILIES.items()), columns=["task_type", "family"])
    versions = pd.DataFrame([(f"heuristic:{s.family}", s.version) for s in SCORERS.values()],
                            columns=["judge", "criteria_version"])
    con.register("_task_families", families)
    con.register("_judge_versions", versions)
    try:
        with transaction(con):
            con.execute(f"""
                CREATE OR REPLACE TEMP TABLE _to_judge AS
                SELECT row_number() OVER (ORDER BY m.message_key) AS n, m.message_key,
                       'heuristic:' || coalesce(f.family, '{GENERIC}') AS judge, v.criteria_version,
                       {_CONTENT_HASH} AS content_hash, m.task_type, m.subject, m.body,
                       concat_ws(chr(10), m.system_prompt, m.user_prompt) AS prompt,
                       m.metadata->>'first_name' AS first_name, m.metadata->>'company' AS company,
                       m.metadata->>'industry' AS industry, m.metadata->>'role' AS role
                FROM messages m JOIN message_labels l USING (message_key)
                LEFT JOIN _task_families f ON f.task_type = lower(trim(m.task_type))
                JOIN _judge_versions v ON v.judge = 'heuristic:' || coalesce(f.family, '{GENERIC}')
                WHERE l.delivered AND NOT EXISTS (
                    SELECT 1 FROM message_judgements j WHERE j.message_key = m.message_key
                      AND j.judge = v.judge AND j.criteria_version = v.criteria_version)""")
            # the same text under the same judge and version: copy its score
            reused = con.execute("""
                INSERT INTO message_judgements (message_key, judge, criteria_version, content_hash, score,
                                                dimensions, unjudged_reason, reused, judged_at)
                SELECT t.message_key, t.judge, t.criteria_version, t.content_hash, j.score, j.dimensions, NULL,
                       true, now()::TIMESTAMP
                FROM _to_judge t
                JOIN (SELECT judge, criteria_version, content_hash, any_value(score) AS score,
                             any_value(dimensions) AS dimensions
                      FROM message_judgements WHERE score IS NOT NULL GROUP BY ALL) j
                  USING (judge, criteria_version, content_hash)""").fetchone()[0]
            run.reused = int(reused)
            con.execute("""DELETE FROM _to_judge t WHERE EXISTS (
                SELECT 1 FROM message_judgements j WHERE j.message_key = t.message_key AND j.judge = t.judge
                  AND j.criteria_version = t.criteria_version)""")
            total = con.execute("SELECT count(*) FROM _to_judge").fetchone()[0]
            last = con.execute("SELECT coalesce(max(n), 0) FROM _to_judge").fetchone()[0]
            for start in range(0, last, batch_size):
                rows = con.execute("SELECT message_key, judge, content_hash, task_type, subject, body, prompt, "
                                   "first_name, company, industry, role FROM _to_judge WHERE n > ? AND n <= ? "
                                   "ORDER BY n", [start, start + batch_size]).fetchall()
                out = []
                for key, judge, content_hash, task_type, subject, body, prompt, first, company, industry, role in rows:
                    context = {k: v for k, v in (("first_name", first), ("company", company),
                                                 ("industry", industry), ("role", role)) if v}
                    result = judge_message(MessageText(task_type or "", subject or "", body or "", prompt or "",
                                                       context))
                    assert result.judge == judge, (result.judge, judge)  # one mapping, in SQL and Python
                    out.append((key, result.judge, result.criteria_version, content_hash, result.score,
                                result.dimensions_json()))
                    run.by_judge[result.judge] = run.by_judge.get(result.judge, 0) + 1
                if out:
                    frame = pd.DataFrame(out, columns=["message_key", "judge", "criteria_version", "content_hash",
                                                       "score", "dimensions"])
                    con.register("_judged_frame", frame)
                    con.execute("""INSERT INTO message_judgements (message_key, judge, criteria_version, content_hash,
                                       score, dimensions, unjudged_reason, reused, judged_at)
                                   SELECT message_key, judge, criteria_version, content_hash, score,
                                          dimensions::JSON, NULL, false, now()::TIMESTAMP FROM _judged_frame""")
                    con.unregister("_judged_frame")
                run.judged += len(out)
                if progress:
                    progress(f"judged {run.judged}/{total} messages")
    finally:
        con.unregister("_task_families")
        con.unregister("_judge_versions")
    return run


JUDGE_SUMMARY_HEADER = ("judge", "criteria version", "messages", "mean score", "p10", "p50", "p90", "unjudged")


def judge_summary(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """Per judge and version (JUDGE_SUMMARY_HEADER)."""
    return con.execute("""
        SELECT judge, criteria_version, count(*), round(avg(score), 2), round(quantile_cont(score, 0.1), 2),
               round(quantile_cont(score, 0.5), 2), round(quantile_cont(score, 0.9), 2),
               count(*) FILTER (score IS NULL)
        FROM message_judgements GROUP BY ALL ORDER BY judge, criteria_version""").fetchall()
