"""outcome_drivers' reads and write: every mature, delivered message's features and outcomes,
aggregated in SQL to sufficient statistics per (organization, task type, feature, value), and
the derived table ``outcome_drivers`` (rebuilt per run: it is data, not schema).

Features (all VARCHAR; 'unknown' when the message does not say):
  framework, tone, model_id; prompt_template, prompt_version (messages.template_id and template_version,
  else the older metadata keys of the same names);
  body_words (word-count bucket, core.drivers.BODY_BUCKETS); subject_words (bucket);
  subject_question ('yes'/'no': a '?' in the subject); personalization ('first_name',
  'company', 'first_name+company' or 'none': the lead's first name / company from metadata
  appearing in the body); send_hour_utc (3-hour bucket) and weekday_utc of sent_at.
  and the judges' scores: for every judge of message_judgements at its current criteria version,
  each dimension score ('<judge>/<dimension>') and the overall score / 100 ('<judge>/score') in
  the bands of core.drivers.DIMENSION_BANDS ('low', 'mid', 'high'); a message the judge did not
  score is not counted for its features.
Outcomes: replied, positive_reply, meeting_booked (the outcome labels' flags).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import duckdb

from flywheel_pipeline.core.drivers import BODY_BUCKETS, DIMENSION_BANDS, METRICS, Cell, Driver, bucket_label
from flywheel_pipeline.warehouse.judge_calibration import CURRENT_JUDGEMENTS_SQL

FEATURES: tuple[str, ...] = ("framework", "tone", "model_id", "prompt_template", "prompt_version", "body_words",
                             "subject_words", "subject_question", "personalization", "send_hour_utc",
                             "weekday_utc")


def _body_bucket_sql(words: str) -> str:
    cases = " ".join(f"WHEN {words} < {high} THEN '{bucket_label(low, high)}'" for low, high in BODY_BUCKETS
                     if high is not None)
    last = bucket_label(*BODY_BUCKETS[-1])
    return f"CASE {cases} ELSE '{last}' END"


def _meta(key: str) -> str:
    return f"nullif(json_extract_string(m.metadata, '$.{key}'), '')"


def _blanks_to_spaces(column: str) -> str:
    """The text with newlines and tabs as spaces and runs of spaces halved four times (see _words)."""
    text = f"coalesce({column}, '')"
    for code in (10, 9, 13):
        text = f"replace({text}, chr({code}), ' ')"
    for _ in range(4):
        text = f"replace({text}, '  ', ' ')"
    return text


def _words(t: str) -> str:
    """Words (runs of non-blank characters) of a text that went through _blanks_to_spaces, without a
    regular expression (a regex over 1M bodies took 15 s, this under 2 s): spaces + 1, less a
    leading and a trailing space, 0 for an empty text. Exact for runs of up to 16 blanks; a longer
    run counts one word more per 16."""
    return (f"(length({t}) - length(replace({t}, ' ', '')) + 1 - starts_with({t}, ' ')::INTEGER"
            f" - ends_with({t}, ' ')::INTEGER - ({t} = '')::INTEGER)")


# one row per mature, delivered message: its features and outcomes
FEATURES_SQL = f"""
SELECT organization_id, task_type, framework, tone, model_id, prompt_template, prompt_version,
       {_body_bucket_sql(_words("body_t"))} AS body_words,
       CASE WHEN subject_t IS NULL THEN 'unknown'
            ELSE (CASE WHEN {_words("subject_t")} = 0 THEN '0' WHEN {_words("subject_t")} <= 3 THEN '1-3'
                       WHEN {_words("subject_t")} <= 6 THEN '4-6' WHEN {_words("subject_t")} <= 9 THEN '7-9'
                       ELSE '10+' END) END AS subject_words,
       subject_question, personalization, send_hour_utc, weekday_utc, replied, positive_reply, meeting_booked
FROM (
    SELECT m.organization_id, coalesce(m.task_type, 'unknown') AS task_type,
           coalesce(m.framework, 'unknown') AS framework, coalesce(m.tone, 'unknown') AS tone,
           coalesce(m.model_id, 'unknown') AS model_id,
           coalesce(nullif(m.template_id, ''), {_meta('prompt_template')}, 'unknown') AS prompt_template,
           coalesce(nullif(m.template_version, ''), {_meta('prompt_version')}, 'unknown') AS prompt_version,
           {_blanks_to_spaces("m.body")} AS body_t,
           CASE WHEN m.subject IS NOT NULL THEN {_blanks_to_spaces("m.subject")} END AS subject_t,
           CASE WHEN m.subject IS NULL THEN 'unknown' WHEN contains(m.subject, '?') THEN 'yes' ELSE 'no'
                END AS subject_question,
           CASE WHEN {_meta('first_name')} IS NULL AND {_meta('company')} IS NULL THEN 'unknown'
                ELSE coalesce(nullif(concat_ws('+',
                         CASE WHEN contains(coalesce(m.body, ''), {_meta('first_name')}) THEN 'first_name' END,
                         CASE WHEN contains(coalesce(m.body, ''), {_meta('company')}) THEN 'company' END), ''),
                     'none') END AS personalization,
           lpad(CAST(hour(l.sent_at) // 3 * 3 AS VARCHAR), 2, '0') || '-'
               || lpad(CAST(hour(l.sent_at) // 3 * 3 + 2 AS VARCHAR), 2, '0') AS send_hour_utc,
           dayname(l.sent_at) AS weekday_utc,
           l.replied::INTEGER AS replied, l.positive_reply::INTEGER AS positive_reply,
           l.meeting_booked::INTEGER AS meeting_booked
    FROM message_labels l JOIN messages m USING (message_key)
    WHERE l.is_mature AND l.delivered)
"""

_CELLS_SQL = f"""
WITH f AS ({FEATURES_SQL})
SELECT organization_id, task_type, feature, value, count(*) AS n,
       {', '.join(f'sum({column})::BIGINT AS {column}' for column in METRICS.values())}
FROM (UNPIVOT f ON {', '.join(FEATURES)} INTO NAME feature VALUE value)
GROUP BY ALL
ORDER BY ALL
"""


def _band_sql(value: str) -> str:
    cases = " ".join(f"WHEN {value} < {high!r} THEN '{label}'" for label, _, high in DIMENSION_BANDS[:-1])
    return f"CASE {cases} ELSE '{DIMENSION_BANDS[-1][0]}' END"


# the judges' dimension scores (and overall score / 100) of mature, delivered messages, banded
_JUDGE_CELLS_SQL = f"""
WITH cur AS ({CURRENT_JUDGEMENTS_SQL}),
scores AS (
    SELECT message_key, judge || '/' || e.key AS feature, e.value AS v
    FROM (SELECT message_key, judge, unnest(map_entries(dimensions::MAP(VARCHAR, DOUBLE))) AS e
          FROM cur WHERE dimensions IS NOT NULL)
    UNION ALL
    SELECT message_key, judge || '/score' AS feature, score / 100 AS v FROM cur)
SELECT m.organization_id, coalesce(m.task_type, 'unknown') AS task_type, s.feature, {_band_sql("s.v")} AS value,
       count(*) AS n,
       {', '.join(f'sum(l.{column}::INTEGER)::BIGINT AS {column}' for column in METRICS.values())}
FROM scores s JOIN message_labels l USING (message_key) JOIN messages m USING (message_key)
WHERE l.is_mature AND l.delivered AND s.v IS NOT NULL
GROUP BY ALL
ORDER BY ALL
"""


def message_features(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """Every mature, delivered message's features and outcomes (tests and inspection; the asset
    reads the aggregates only)."""
    return con.execute(FEATURES_SQL).fetchall()


def feature_cells(con: duckdb.DuckDBPyConnection) -> list[Cell]:
    """Sufficient statistics per (organization, task type, feature, value): messages and events per
    metric; the message features, then the judges' banded scores."""
    rows = con.execute(_CELLS_SQL).fetchall() + con.execute(_JUDGE_CELLS_SQL).fetchall()
    names = list(METRICS)
    return [Cell(org, task, feature, value, int(n), {metric: int(count) for metric, count in zip(names, counts)})
            for org, task, feature, value, n, *counts in rows]


COLUMNS: tuple[tuple[str, str], ...] = (
    ("task_type", "VARCHAR"), ("feature", "VARCHAR"), ("value", "VARCHAR"), ("metric", "VARCHAR"),
    ("n", "BIGINT"), ("events", "BIGINT"), ("rate", "DOUBLE"), ("rest_n", "BIGINT"), ("rest_rate", "DOUBLE"),
    ("organizations", "INTEGER"), ("tested", "BOOLEAN"), ("estimate", "DOUBLE"), ("ci_low", "DOUBLE"),
    ("ci_high", "DOUBLE"), ("p_value", "DOUBLE"), ("p_adjusted", "DOUBLE"), ("significant", "BOOLEAN"))


def write_drivers(con: duckdb.DuckDBPyConnection, results: Sequence[Driver], computed_at: datetime) -> int:
    """Replace the derived table outcome_drivers with this run's results."""
    columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"CREATE OR REPLACE TABLE outcome_drivers ({columns}, computed_at TIMESTAMP)")
        if results:
            placeholders = ", ".join("?" for _ in range(len(COLUMNS) + 1))
            con.executemany(f"INSERT INTO outcome_drivers VALUES ({placeholders})",
                            [[getattr(d, name) for name, _ in COLUMNS] + [computed_at] for d in results])
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    return len(results)


def read_drivers(con: duckdb.DuckDBPyConnection) -> list[Driver]:
    """The latest run's results (empty before the first run), e.g. for the prompt optimizer's guidance."""
    if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'outcome_drivers' "
                       "AND schema_name = 'main'").fetchone()[0]:
        return []
    names = [name for name, _ in COLUMNS]
    return [Driver(**dict(zip(names, row))) for row in
            con.execute(f"SELECT {', '.join(names)} FROM outcome_drivers ORDER BY ALL").fetchall()]
