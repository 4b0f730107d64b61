"""Judging every delivered message once per judge and criteria version (table
``message_judgements``). Incremental: only messages without a judgement of their judge's current
version are read; a text already judged under the same judge and version (same content hash:
everything a judge reads of the message: task type, subject, body, prompts and the lead's first
name, company, industry and role) is copied, not scored again. Streams in batches.

Two judges write here: the offline heuristic scorers (:func:`judge_new_messages`, in one
connection) and the LLM judge (:func:`judge_with_llm`, deepeval G-Eval through an OpenAI-compatible
endpoint, with a budget; it opens a short connection per page so no lock is held while it waits
on the endpoint)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from decimal import Decimal

import duckdb
import pandas as pd

from flywheel_pipeline.core import llm_judge
from flywheel_pipeline.core.message_scorers import GENERIC, SCORERS, TASK_FAMILIES, MessageText
from flywheel_pipeline.warehouse.schema import transaction

# the task type as both judges map it to a family (lower case, surrounding whitespace of any kind removed)
_TASK = r"lower(regexp_replace(coalesce(m.task_type, ''), '^\s+|\s+$', '', 'g'))"
CONTEXT_FIELDS = ("first_name", "company", "industry", "role")  # the lead context judges read from metadata
_CONTEXT = ", ".join(f"m.metadata->>'{name}' AS {name}" for name in CONTEXT_FIELDS)
# everything a judge reads, so two messages share a score only when a judge could not tell them apart
_CONTENT_HASH = ("sha256(concat_ws(chr(31), " + _TASK + ", "
                 + ", ".join(f"coalesce({c}, '')" for c in ("m.subject", "m.body", "m.system_prompt", "m.user_prompt",
                                                            *(f"m.metadata->>'{n}'" for n in CONTEXT_FIELDS)))
                 + "))")
_INSERT_COLUMNS = ("message_key, judge, criteria_version, content_hash, score, dimensions, unjudged_reason, reused, "
                   "judged_at, judge_model, cost_usd, attempts, critique")


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
                SELECT m.message_key,
                       'heuristic:' || coalesce(f.family, '{GENERIC}') AS judge, v.criteria_version,
                       {_CONTENT_HASH} AS content_hash
                FROM messages m JOIN message_labels l USING (message_key)
                LEFT JOIN _task_families f ON f.task_type = {_TASK}
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
        after = None
        while True:
            # the texts a batch at a time, in key order (the list of what to judge holds keys and hashes only;
            # numbering it with a window would sort all of it in memory)
            rows = con.execute(f"""
                SELECT t.message_key, t.judge, t.content_hash, m.task_type, m.subject, m.body,
                       concat_ws(chr(10), m.system_prompt, m.user_prompt) AS prompt, {_CONTEXT}
                FROM (SELECT * FROM _to_judge WHERE $after IS NULL OR message_key > $after
                      ORDER BY message_key LIMIT $size) t
                JOIN messages m USING (message_key) ORDER BY t.message_key""",
                               {"after": after, "size": batch_size}).fetchall()
            if not rows:
                break
            after = rows[-1][0]
            out = []
            for key, judge, content_hash, task_type, subject, body, prompt, *lead in rows:
                context = {k: v for k, v in zip(CONTEXT_FIELDS, lead) if v}
                # the scorer is the one the SQL chose (the judge's name), so the two cannot disagree
                result = SCORERS[judge.removeprefix("heuristic:")].judge(
                    MessageText(task_type or "", subject or "", body or "", prompt or "", context))
                out.append((key, result.judge, result.criteria_version, content_hash, result.score,
                            result.dimensions_json()))
                run.by_judge[result.judge] = run.by_judge.get(result.judge, 0) + 1
            if out:
                frame = pd.DataFrame(out, columns=["message_key", "judge", "criteria_version", "content_hash",
                                                   "score", "dimensions"])
                con.register("_judged_frame", frame)
                with transaction(con):  # a batch at a time: a run's memory does not grow with its size
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
        con.execute("DROP TABLE IF EXISTS _to_judge")
    return run


JUDGE_SUMMARY_HEADER = ("judge", "criteria version", "messages", "mean score", "p10", "p50", "p90", "unjudged")


def judge_summary(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """Per judge and version (JUDGE_SUMMARY_HEADER)."""
    return con.execute("""
        SELECT judge, criteria_version, count(*), round(avg(score), 2), round(quantile_cont(score, 0.1), 2),
               round(quantile_cont(score, 0.5), 2), round(quantile_cont(score, 0.9), 2),
               count(*) FILTER (score IS NULL)
        FROM message_judgements GROUP BY ALL ORDER BY judge, criteria_version""").fetchall()


# ---------------------------------------------------------------- the LLM judge

@dataclass
class LLMRun:
    """One run of the LLM judge (its metadata)."""
    model: str
    budget_usd: Decimal
    judged: dict[str, int] = field(default_factory=dict)  # per judge: judged by a call now
    reused: dict[str, int] = field(default_factory=dict)  # per judge: copied from the same content judged before
    unjudged: dict[str, dict[str, int]] = field(default_factory=dict)  # per judge and reason: recorded unjudged
    calls: int = 0  # attempts made
    spent_usd: Decimal = Decimal(0)
    stopped_by_budget: bool = False
    left: int = 0  # messages still to judge (the budget stopped the run, or a transient error): the next run's

    def count(self, table: dict, judge: str, n: int, reason: str | None = None) -> None:
        if reason is None:
            table[judge] = table.get(judge, 0) + n
        else:
            table.setdefault(judge, {})[reason] = table.setdefault(judge, {}).get(reason, 0) + n


def _register_llm(con: duckdb.DuckDBPyConnection, model: str) -> None:
    families = pd.DataFrame([(task, llm_judge.family_for(task)) for task in TASK_FAMILIES],
                            columns=["task_type", "family"])
    versions = pd.DataFrame([(c.family, llm_judge.judge_name(c.family, model), c.version)
                             for c in llm_judge.CRITERIA.values()], columns=["family", "judge", "criteria_version"])
    con.register("_llm_families", families)
    con.register("_llm_versions", versions)


def _unregister_llm(con: duckdb.DuckDBPyConnection) -> None:
    con.unregister("_llm_families")
    con.unregister("_llm_versions")


_TRANSIENT = ", ".join(f"'{r}'" for r in llm_judge.TRANSIENT_REASONS)
# delivered messages without a judgement of the LLM judge's current criteria (or one left unjudged by a
# transient error: timeouts, connection and HTTP errors are tried again)
_LLM_CANDIDATES = f"""
    SELECT m.message_key, v.judge, v.criteria_version, v.family, {_CONTENT_HASH} AS content_hash,
           m.task_type, m.subject, m.body, m.system_prompt, m.user_prompt, {_CONTEXT}
    FROM messages m JOIN message_labels l USING (message_key)
    LEFT JOIN _llm_families f ON f.task_type = {_TASK}
    JOIN _llm_versions v ON v.family = coalesce(f.family, '{GENERIC}')
    WHERE l.delivered AND NOT EXISTS (
        SELECT 1 FROM message_judgements j WHERE j.message_key = m.message_key AND j.judge = v.judge
          AND j.criteria_version = v.criteria_version
          AND (j.unjudged_reason IS NULL OR j.unjudged_reason NOT IN ({_TRANSIENT})))"""


def _copy_judged_contents(con: duckdb.DuckDBPyConnection, model: str) -> list[tuple[str, int]]:
    """Every candidate whose content the same judge and criteria version scored before: the score
    copied for free (``reused``). Returns (judge, messages) copied."""
    with transaction(con):
        con.execute(f"CREATE OR REPLACE TEMP TABLE _llm_copies AS SELECT c.*, j.score, j.dimensions, j.critique "
                    f"FROM ({_LLM_CANDIDATES}) c JOIN (SELECT judge, criteria_version, content_hash, "
                    "any_value(score) AS score, any_value(dimensions) AS dimensions, any_value(critique) AS critique "
                    "FROM message_judgements WHERE score IS NOT NULL GROUP BY ALL) j "
                    "USING (judge, criteria_version, content_hash)")
        # delete and insert, not INSERT OR REPLACE: DuckLake has no keys
        con.execute("DELETE FROM message_judgements j USING _llm_copies c WHERE j.message_key = c.message_key "
                    "AND j.judge = c.judge AND j.criteria_version = c.criteria_version")
        con.execute(f"""INSERT INTO message_judgements ({_INSERT_COLUMNS})
                        SELECT message_key, judge, criteria_version, content_hash, score, dimensions, NULL, true,
                               now()::TIMESTAMP, ?, 0, 0, critique FROM _llm_copies""", [model])
        copied = con.execute("SELECT judge, count(*) FROM _llm_copies GROUP BY judge").fetchall()
        con.execute("DROP TABLE _llm_copies")
    return [(judge, int(n)) for judge, n in copied]


@dataclass(frozen=True)
class _Content:
    """One distinct content to judge, and every message that has it."""
    judge: str
    criteria_version: str
    family: str
    content_hash: str
    message_keys: list[int]
    message: llm_judge.JudgeInput


def _page(con: duckdb.DuckDBPyConnection, after: tuple[str, str], size: int) -> list[_Content]:
    rows = con.execute(f"""
        SELECT judge, criteria_version, family, content_hash, list(message_key ORDER BY message_key),
               arg_min(task_type, message_key), arg_min(subject, message_key), arg_min(body, message_key),
               arg_min(system_prompt, message_key), arg_min(user_prompt, message_key),
               {', '.join(f'arg_min({n}, message_key)' for n in CONTEXT_FIELDS)}
        FROM ({_LLM_CANDIDATES}) c
        WHERE judge > ? OR (judge = ? AND content_hash > ?)
        GROUP BY judge, criteria_version, family, content_hash
        ORDER BY judge, content_hash LIMIT ?""", [after[0], after[0], after[1], size]).fetchall()
    return [_Content(judge, version, family, content_hash, list(keys),
                     llm_judge.JudgeInput(task or "", subject or "", body or "", system or "", user or "",
                                          {k: v for k, v in zip(CONTEXT_FIELDS, lead) if v}))
            for judge, version, family, content_hash, keys, task, subject, body, system, user, *lead in rows]


def _write(con: duckdb.DuckDBPyConnection, model: str, done: list[tuple[_Content, llm_judge.Outcome]]) -> None:
    """One row per message: the content's first message carries the calls and their cost, the others
    are copies (``reused``)."""
    rows = []
    for content, outcome in done:
        verdict = outcome.verdict
        for i, key in enumerate(content.message_keys):
            rows.append((key, content.judge, content.criteria_version, content.content_hash,
                         None if verdict is None else verdict.score,
                         None if verdict is None else json.dumps(verdict.dimensions, sort_keys=True),
                         outcome.reason, i > 0, model, outcome.cost_usd if i == 0 else Decimal(0),
                         outcome.attempts if i == 0 else 0,
                         json.dumps(verdict.critique if verdict is not None else {"error": outcome.detail})))
    if not rows:
        return
    frame = pd.DataFrame(rows, columns=["message_key", "judge", "criteria_version", "content_hash", "score",
                                        "dimensions", "unjudged_reason", "reused", "judge_model", "cost_usd",
                                        "attempts", "critique"])
    frame["cost_usd"] = frame["cost_usd"].astype(str)
    con.register("_llm_frame", frame)
    try:
        with transaction(con):
            con.execute("DELETE FROM message_judgements j USING _llm_frame f WHERE j.message_key = f.message_key "
                        "AND j.judge = f.judge AND j.criteria_version = f.criteria_version")
            con.execute(f"""INSERT INTO message_judgements ({_INSERT_COLUMNS})
                            SELECT message_key, judge, criteria_version, content_hash, score, dimensions::JSON,
                                   unjudged_reason, reused, now()::TIMESTAMP, judge_model,
                                   cost_usd::DECIMAL(38, 12), attempts, critique::JSON FROM _llm_frame""")
    finally:
        con.unregister("_llm_frame")


def _left(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute(f"SELECT count(*) FROM ({_LLM_CANDIDATES})").fetchone()[0])


def judge_with_llm(connect: Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]], judge: llm_judge.LLMJudge,
                   *, concurrency: int = 4, page_size: int = 100,
                   progress: Callable[[str], None] | None = None) -> LLMRun:
    """Judge every delivered message that has no judgement of the LLM judge's current criteria:
    contents judged before are copied; the others are judged once per distinct content, up to
    ``concurrency`` calls at a time, a page of contents at a time, until done or the budget stops
    it (nothing is recorded for what the budget left: the next run judges it). ``connect()`` opens
    a short connection per step, so no lock is held while calls are in flight."""
    if concurrency < 1 or page_size < 1:
        raise ValueError("concurrency and page_size must be at least 1")
    model = judge.settings.model
    run = LLMRun(model=model, budget_usd=judge.budget.limit)
    with connect() as con:
        _register_llm(con, model)
        try:
            for name, n in _copy_judged_contents(con, model):
                run.count(run.reused, name, n)
        finally:
            _unregister_llm(con)
    asyncio.run(_judge_pages(connect, judge, run, concurrency, page_size, progress))
    run.spent_usd = judge.budget.spent
    with connect() as con:
        _register_llm(con, model)
        try:
            run.left = _left(con)
        finally:
            _unregister_llm(con)
    return run


async def _judge_pages(connect, judge: llm_judge.LLMJudge, run: LLMRun, concurrency: int, page_size: int,
                       progress: Callable[[str], None] | None) -> None:
    gate = asyncio.Semaphore(concurrency)
    budget = judge.budget

    async def one(content: _Content) -> tuple[_Content, llm_judge.Outcome]:
        async with gate:
            if budget.exhausted:
                return content, llm_judge.Outcome(reason=llm_judge.BUDGET)
            return content, await judge.judge(llm_judge.CRITERIA[content.family], content.message)

    after = ("", "")
    async with judge:
        while not budget.exhausted:
            with connect() as con:
                _register_llm(con, run.model)
                try:
                    page = _page(con, after, page_size)
                finally:
                    _unregister_llm(con)
            if not page:
                break
            after = (page[-1].judge, page[-1].content_hash)
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(one(content)) for content in page]
            except ExceptionGroup as failed:  # the first error of the page, as itself (e.g. a refused key)
                raise failed.exceptions[0] from None
            results = [task.result() for task in tasks]
            done = [(c, o) for c, o in results if o.reason != llm_judge.BUDGET]
            for content, outcome in results:
                run.calls += outcome.attempts
                if outcome.reason == llm_judge.BUDGET:
                    continue
                n = len(content.message_keys)
                if outcome.verdict is not None:
                    run.count(run.judged, content.judge, 1)
                    if n > 1:
                        run.count(run.reused, content.judge, n - 1)
                else:
                    run.count(run.unjudged, content.judge, n, outcome.reason)
            with connect() as con:
                _write(con, run.model, done)
            if progress:
                progress(f"LLM judge: {sum(run.judged.values())} contents judged, {budget.spent:.4f} of "
                         f"{budget.limit} USD spent")
    run.stopped_by_budget = budget.exhausted
