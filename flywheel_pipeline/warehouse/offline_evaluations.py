"""Offline evaluations: the held-out prompts a candidate and its champion answer, and the
tally of each evaluation (table offline_evaluations)."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb


@dataclass(frozen=True)
class Candidate:
    model_id: str
    family: str
    dataset_version: str
    method: str
    task_type: str = "all"


def newest_ready_model(con: duckdb.DuckDBPyConnection) -> Candidate | None:
    row = con.execute("SELECT model_id, family, dataset_version, method, task_type FROM model_registry "
                      "WHERE status = 'ready' ORDER BY created_at DESC LIMIT 1").fetchone()
    return None if row is None else Candidate(*row)


def held_out_prompts(con: duckdb.DuckDBPyConnection, limit: int) -> list[tuple[str | None, str]]:
    """(system prompt, user prompt) of the positive examples of the validation split."""
    return con.execute("SELECT system_prompt, user_prompt FROM training_examples "
                       "WHERE split = 'validation' AND label ORDER BY message_id LIMIT ?", [limit]).fetchall()


def record_evaluation(con: duckdb.DuckDBPyConnection, *, run_id: str, candidate: str, champion: str, judge: str,
                      generator: str, prompts: int, tally: dict[str, int], win_rate: float, loss_rate: float,
                      decided_by: str, judge_trusted: bool, gate_passed: bool, gate_reason: str) -> None:
    """One evaluation's tally and what the gate decided with (a trusted judge, or 'outcomes')."""
    con.execute("""INSERT INTO offline_evaluations (run_id, candidate, champion, judge, generator, prompts, wins,
                       losses, ties, skipped, win_rate, loss_rate, created_at, decided_by, judge_trusted,
                       gate_passed, gate_reason)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP, ?, ?, ?, ?)""",
                [run_id, candidate, champion, judge, generator, prompts, tally["candidate"], tally["champion"],
                 tally["tie"], tally["skipped"], win_rate, loss_rate, decided_by, judge_trusted, gate_passed,
                 gate_reason])
