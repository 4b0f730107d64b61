"""Training data from outcome labels, in DuckDB: the redacted text pool, example selection,
preference pairs, and JSONL exports written by DuckDB's own JSON writer.

* ``redacted_messages``: the PII-redacted prompt and message text of every mature, delivered
  (not bounced) message; built incrementally (each message is redacted once, in batches).
  Scores are *not* stored here: they change when late outcomes arrive, so selection joins
  the current labels.
* ``training_examples``: one selection (the latest materialization's config): positives
  (``quality_score >= min_quality_score``), optionally negatives (``<= max_negative_score``,
  for KTO), near-duplicates collapsed (best score kept), balance caps per
  ``task_type``/``framework``, a split by lead hash.
* ``preference_pairs``: preferred / non-preferred messages of the same context
  (organization, task type, lead industry and role) with a score margin; the two leads are
  on the same side of the split. With ``include_council_pairs`` (off by default) the AI
  council's pairs whose judge was trusted join them, redacted, split by council request, each
  row's ``source`` (``outcomes`` or ``council``) and ``judge`` saying where it came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from flywheel_pipeline.core.council import prompt_parts
from flywheel_pipeline.core.datasets import SPLIT_SALT, assistant_text, dedupe_key
from flywheel_pipeline.core.pii import redact
from flywheel_pipeline.warehouse.lake import current_snapshot
from flywheel_pipeline.warehouse.schema import transaction

def _split_sql(lead: str, fraction: float) -> str:
    bucket = f"(('0x' || substr(sha256('{SPLIT_SALT}:' || {lead}), 1, 15))::UBIGINT / 16^15)"
    return f"CASE WHEN {bucket} < {float(fraction)!r} THEN 'validation' ELSE 'train' END"


@dataclass
class RedactResult:
    redacted: int = 0
    found: Counter = field(default_factory=Counter)


def redact_new_messages(con: duckdb.DuckDBPyConnection, *, batch_size: int = 5_000,
                        progress: Callable[[str], None] | None = None) -> RedactResult:
    """Redact every mature, non-bounced labelled message not redacted yet."""
    result = RedactResult()
    with transaction(con):
        con.execute("""
            CREATE OR REPLACE TEMP TABLE _to_redact AS
            SELECT row_number() OVER (ORDER BY m.message_key) AS n, m.message_key, m.system_prompt,
                   m.user_prompt, m.subject, m.body,
                   m.metadata->>'first_name' AS first_name, m.metadata->>'last_name' AS last_name,
                   m.metadata->>'sender_name' AS sender_name, m.metadata->>'industry' AS industry,
                   m.metadata->>'role' AS lead_role
            FROM messages m JOIN message_labels l USING (message_key)
            ANTI JOIN redacted_messages r USING (message_key)
            WHERE l.is_mature AND NOT l.bounced
        """)
        total = con.execute("SELECT count(*) FROM _to_redact").fetchone()[0]
        for start in range(0, total, batch_size):
            rows = con.execute("SELECT message_key, system_prompt, user_prompt, subject, body, first_name, "
                               "last_name, sender_name, industry, lead_role FROM _to_redact "
                               "WHERE n > ? AND n <= ? ORDER BY n", [start, start + batch_size]).fetchall()
            out = []
            for key, system, user, subject, body, first, last, sender, industry, role in rows:
                names = {"first_name": first, "last_name": last, "sender_name": sender}
                found: Counter = Counter()
                texts = []
                for text in (system, user, assistant_text(subject, body)):
                    r = redact(text, **names)
                    found.update(r.counts)
                    texts.append(r.text if text else None)
                result.found.update(found)
                out.append((key, texts[0], texts[1], texts[2] or "", dedupe_key(texts[2] or ""), industry, role,
                            json.dumps(dict(found))))
            frame = pd.DataFrame(out, columns=["message_key", "system_prompt", "user_prompt", "assistant",
                                               "dedupe_key", "industry", "lead_role", "redactions"])
            con.register("_redacted_frame", frame)
            con.execute("INSERT INTO redacted_messages SELECT *, now()::TIMESTAMP FROM _redacted_frame")
            con.unregister("_redacted_frame")
            result.redacted += len(out)
            if progress:
                progress(f"redacted {result.redacted}/{total} messages")
        con.execute("DROP TABLE IF EXISTS _to_redact")
    return result


_POOL = """
SELECT m.message_id, m.message_key, m.organization_id, m.lead_id, m.task_type, m.framework, m.sent_at,
       l.quality_score, l.stage, r.system_prompt, r.user_prompt, r.assistant, r.dedupe_key,
       r.industry, r.lead_role, {split} AS split
FROM redacted_messages r
JOIN message_labels l USING (message_key)
JOIN messages m USING (message_key)
WHERE l.is_mature AND NOT l.bounced {org_filter}
"""


def _pool_sql(organization_id: str | None, validation_fraction: float) -> tuple[str, list]:
    split = _split_sql("m.lead_id", validation_fraction) if validation_fraction > 0 else "'train'"
    return (_POOL.format(split=split, org_filter="AND m.organization_id = ?" if organization_id else ""),
            [organization_id] if organization_id else [])


@dataclass(frozen=True)
class SelectionConfig:
    min_quality_score: float = 0.6
    include_negative_examples: bool = False
    max_negative_score: float = 0.2
    organization_id: str | None = None
    limit: int | None = None
    validation_fraction: float = 0.1
    max_per_task_framework: int | None = None


def build_training_examples(con: duckdb.DuckDBPyConnection, cfg: SelectionConfig) -> dict[str, object]:
    """(Re)build ``training_examples`` for ``cfg``; returns counts for metadata."""
    if not 0.0 <= cfg.min_quality_score <= 1.0:
        raise ValueError("min_quality_score must be in [0, 1]")
    if cfg.include_negative_examples and cfg.max_negative_score >= cfg.min_quality_score:
        raise ValueError("max_negative_score must be below min_quality_score")
    pool, params = _pool_sql(cfg.organization_id, cfg.validation_fraction)
    negatives = f"OR (quality_score <= {float(cfg.max_negative_score)!r})" if cfg.include_negative_examples else ""
    cap = f"QUALIFY row_number() OVER (PARTITION BY label, coalesce(task_type, ''), coalesce(framework, '') " \
          f"ORDER BY quality_score DESC, message_id) <= {int(cfg.max_per_task_framework)}" \
        if cfg.max_per_task_framework else ""
    limit = f"LIMIT {int(cfg.limit)}" if cfg.limit else ""
    with transaction(con):
        con.execute(f"CREATE OR REPLACE TEMP TABLE _eligible AS SELECT *, quality_score >= {cfg.min_quality_score!r} "
                    f"AS label FROM ({pool}) WHERE quality_score >= {cfg.min_quality_score!r} {negatives}", params)
        eligible = con.execute("SELECT count(*) FROM _eligible").fetchone()[0]
        con.execute("""CREATE OR REPLACE TEMP TABLE _deduped AS SELECT * FROM _eligible
                       QUALIFY row_number() OVER (PARTITION BY dedupe_key
                                                  ORDER BY quality_score DESC, sent_at DESC, message_id) = 1""")
        deduped = con.execute("SELECT count(*) FROM _deduped").fetchone()[0]
        con.execute(f"""CREATE OR REPLACE TABLE training_examples AS
                        SELECT * FROM (SELECT * FROM _deduped {cap})
                        ORDER BY quality_score DESC, message_id {limit}""")
        stats = con.execute("""
            SELECT count(*), count(*) FILTER (label), count(*) FILTER (NOT label),
                   count(*) FILTER (split = 'train'), count(*) FILTER (split = 'validation'),
                   count(DISTINCT lead_id), count(*) FILTER (stage = 'deal_closed')
            FROM training_examples""").fetchone()
        con.execute("DROP TABLE IF EXISTS _eligible")
        con.execute("DROP TABLE IF EXISTS _deduped")
    return {"eligible": int(eligible), "duplicates_removed": int(eligible - deduped),
            "capped_or_limited": int(deduped - stats[0]), "examples": int(stats[0]), "positives": int(stats[1]),
            "negatives": int(stats[2]), "train": int(stats[3]), "validation": int(stats[4]),
            "leads": int(stats[5]), "deals_in_training": int(stats[6])}


@dataclass(frozen=True)
class PairConfig:
    min_margin: float = 0.3
    organization_id: str | None = None
    validation_fraction: float = 0.1
    limit: int | None = None
    include_council_pairs: bool = False  # the AI council's pairs of trusted judges join (council_pairs)


def build_preference_pairs(con: duckdb.DuckDBPyConnection, cfg: PairConfig) -> dict[str, object]:
    """Pair the i-th best with the i-th worst message of each context and split (each message
    used once); keep pairs whose scores differ by at least the margin and whose texts differ."""
    if not 0.0 < cfg.min_margin <= 1.0:
        raise ValueError("min_margin must be in (0, 1]")
    pool, params = _pool_sql(cfg.organization_id, cfg.validation_fraction)
    limit = f"LIMIT {int(cfg.limit)}" if cfg.limit else ""
    with transaction(con):
        con.execute(f"""
            CREATE OR REPLACE TABLE preference_pairs AS
            WITH pool AS (
                SELECT * FROM ({pool})
                QUALIFY row_number() OVER (PARTITION BY dedupe_key ORDER BY quality_score DESC, message_id) = 1
            ), ranked AS (
                SELECT *,
                       row_number() OVER (PARTITION BY ctx ORDER BY quality_score DESC, message_id) AS top_rank,
                       row_number() OVER (PARTITION BY ctx ORDER BY quality_score ASC, message_id) AS bottom_rank,
                       count(*) OVER (PARTITION BY ctx) AS n
                FROM (SELECT *, concat_ws('|', organization_id, coalesce(task_type, ''), coalesce(industry, ''),
                                          coalesce(lead_role, ''), split) AS ctx FROM pool)
            )
            SELECT p.ctx AS context, p.organization_id, p.task_type, p.industry, p.lead_role, p.split,
                   p.system_prompt, p.user_prompt,
                   p.message_id AS preferred_message_id, p.quality_score AS preferred_score,
                   p.assistant AS preferred, p.lead_id AS preferred_lead_id,
                   q.message_id AS non_preferred_message_id, q.quality_score AS non_preferred_score,
                   q.assistant AS non_preferred, q.lead_id AS non_preferred_lead_id,
                   round(p.quality_score - q.quality_score, 6) AS margin,
                   'outcomes' AS source, NULL::VARCHAR AS judge, NULL::VARCHAR AS council_pair_id
            FROM ranked p JOIN ranked q ON p.ctx = q.ctx AND p.top_rank = q.bottom_rank
            WHERE p.top_rank <= p.n // 2
              AND p.quality_score - q.quality_score >= {cfg.min_margin!r}
              AND p.dedupe_key <> q.dedupe_key
            ORDER BY margin DESC, preferred_message_id
            {limit}
        """, params)
        council = _add_council_pairs(con, cfg) if cfg.include_council_pairs else {}
        stats = con.execute("""
            SELECT count(*), count(DISTINCT context), coalesce(avg(margin), 0), coalesce(min(margin), 0),
                   coalesce(max(margin), 0), count(*) FILTER (split = 'train'), count(*) FILTER (split = 'validation')
            FROM preference_pairs""").fetchone()
    return {"pairs": int(stats[0]), "contexts": int(stats[1]), "mean_margin": round(float(stats[2]), 4),
            "min_margin": round(float(stats[3]), 4), "max_margin": round(float(stats[4]), 4),
            "train": int(stats[5]), "validation": int(stats[6]), "include_council_pairs": cfg.include_council_pairs,
            "pairs_by_source": pair_provenance(con)["pairs_by_source"], **council}


def _add_council_pairs(con: duckdb.DuckDBPyConnection, cfg: PairConfig) -> dict[str, object]:
    """Append the council's pairs whose judge ``judge_calibration`` trusted (of one organization
    when ``cfg.organization_id``): prompts and answers redacted like the messages' text, judge
    scores and margins divided by 100 (the outcome pairs' 0-1 scale), split by a hash of the
    council request (its pairs share the prompt), texts that redact to the same dedupe key left
    out. Counts go to the metadata, untrusted pairs as excluded."""
    org = "AND organization_id = ?" if cfg.organization_id else ""
    params = [cfg.organization_id] if cfg.organization_id else []
    untrusted = con.execute(f"SELECT count(*) FROM council_pairs WHERE NOT judge_trusted {org}", params).fetchone()[0]
    rows = con.execute(f"""SELECT pair_id, council_id, organization_id, task_type, messages, preferred, preferred_score,
                                  non_preferred, non_preferred_score, margin, judge
                           FROM council_pairs WHERE judge_trusted {org} ORDER BY pair_id""", params).fetchall()
    out = []
    for (pair_id, council_id, organization_id, task_type, messages, preferred, p_score, other, o_score, margin,
         judge) in rows:
        system, user = prompt_parts(json.loads(messages))
        texts = [redact(t).text if t else t for t in (system, user, preferred, other)]
        if dedupe_key(texts[2]) == dedupe_key(texts[3]):
            continue
        out.append((f"council|{organization_id or ''}|{task_type}", organization_id, task_type, council_id,
                    texts[0], texts[1], round(p_score / 100, 6), texts[2], round(o_score / 100, 6), texts[3],
                    round(margin / 100, 6), judge, pair_id))
    frame = pd.DataFrame(out, columns=["context", "organization_id", "task_type", "council_id", "system_prompt",
                                       "user_prompt", "preferred_score", "preferred", "non_preferred_score",
                                       "non_preferred", "margin", "judge", "council_pair_id"])
    split = _split_sql("council_id", cfg.validation_fraction) if cfg.validation_fraction > 0 else "'train'"
    if len(frame):
        con.register("_council_frame", frame)
        try:
            con.execute(f"""INSERT INTO preference_pairs BY NAME
                            SELECT * EXCLUDE (council_id), {split} AS split, 'council' AS source
                            FROM _council_frame ORDER BY council_pair_id""")
        finally:
            con.unregister("_council_frame")
    return {"council_pairs": len(out), "council_pairs_untrusted_excluded": int(untrusted),
            "council_pairs_same_text_skipped": len(rows) - len(out)}


def pair_provenance(con: duckdb.DuckDBPyConnection) -> dict[str, object]:
    """Where the preference pairs came from: pairs per source, and per judge for the council's."""
    by_source = dict(con.execute("SELECT source, count(*) FROM preference_pairs GROUP BY 1 ORDER BY 1").fetchall())
    judges = dict(con.execute("SELECT judge, count(*) FROM preference_pairs WHERE source = 'council' "
                              "GROUP BY 1 ORDER BY 1").fetchall())
    return {"pairs_by_source": {k: int(v) for k, v in by_source.items()},
            "council_pairs_by_judge": {k: int(v) for k, v in judges.items()}}


# ---- exports ------------------------------------------------------------------------------

_MESSAGES = """list_filter([{{'role': 'system', 'content': system_prompt}},
                    {{'role': 'user', 'content': user_prompt}},
                    {{'role': 'assistant', 'content': {assistant}}}], lambda x: x.content IS NOT NULL)"""
_PROMPT = """list_filter([{'role': 'system', 'content': system_prompt},
                  {'role': 'user', 'content': user_prompt}], lambda x: x.content IS NOT NULL)"""

EXPORT_QUERIES = {
    # OpenAI-style chat SFT: positives only
    "sft": ("training_examples", "label",
            f"SELECT {_MESSAGES.format(assistant='assistant')} AS messages"),
    # OpenAI-style preference (DPO)
    "dpo": ("preference_pairs", "true",
            f"SELECT {{'messages': {_PROMPT}}} AS input, "
            "[{'role': 'assistant', 'content': preferred}] AS preferred_output, "
            "[{'role': 'assistant', 'content': non_preferred}] AS non_preferred_output"),
    # TRL conversational DPO
    "trl_dpo": ("preference_pairs", "true",
                f"SELECT {_PROMPT} AS prompt, [{{'role': 'assistant', 'content': preferred}}] AS chosen, "
                "[{'role': 'assistant', 'content': non_preferred}] AS rejected"),
    # TRL KTO: positives and negatives with their label
    "trl_kto": ("training_examples", "true",
                f"SELECT {_PROMPT} AS prompt, [{{'role': 'assistant', 'content': assistant}}] AS completion, "
                "label"),
}


# the exports the dataset assets write: each format with its TRL companion (ExportConfig.include_trl)
EXPORT_SETS = {"sft": "trl_kto", "dpo": "trl_dpo"}
NO_SNAPSHOT = "unavailable: the DuckDB file backend keeps no snapshots (the ducklake backend does)"


def _write_exports(con: duckdb.DuckDBPyConnection, directory: Path, formats: list[str],
                   files: dict[str, Path], rows: dict[str, int]) -> None:
    for fmt in formats:
        table, where, select = EXPORT_QUERIES[fmt]
        for split in ("train", "validation"):
            name = f"{fmt}.{split}.jsonl"
            path = directory / name
            target = str(path).replace("'", "''")
            # rows keep the table's order (tables are written in a deterministic ORDER BY and
            # DuckDB preserves insertion order), so the same selection gives the same bytes
            count = con.execute(f"COPY ({select} FROM {table} WHERE {where} AND split = '{split}') "
                                f"TO '{target}' (FORMAT json)").fetchone()[0]
            files[name], rows[name] = path, int(count)


@dataclass
class ExportResult:
    version: str
    directory: Path
    files: dict[str, Path]
    rows: dict[str, int]
    reused: bool
    snapshot: int | None = None


def export_jsonl(con: duckdb.DuckDBPyConnection, exports_root: Path, formats: list[str],
                 provenance: dict[str, object] | None = None) -> ExportResult:
    """Write ``<format>.<split>.jsonl`` files with DuckDB's JSON writer into a temporary
    directory, name the directory by the sha256 of its files (the dataset version) and
    rename it into ``exports_root/<version>/`` atomically. The same content yields the same
    version; an existing version directory is reused, never overwritten. The files are read in
    one transaction, and the manifest records the warehouse snapshot they were read from
    (DuckLake; the DuckDB file backend keeps none): ``flywheel datasets --snapshot N`` reads the
    same tables as of N and so writes the same bytes. ``provenance`` (where
    the rows came from) is written into ``manifest.json`` too."""
    exports_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = exports_root / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    files: dict[str, Path] = {}
    rows: dict[str, int] = {}
    try:
        with transaction(con):  # one snapshot for every file
            snapshot = current_snapshot(con)
            _write_exports(con, tmp, formats, files, rows)
        digest = hashlib.sha256()
        for name in sorted(files):
            digest.update(name.encode())
            with open(files[name], "rb") as fh:
                for block in iter(lambda: fh.read(8 << 20), b""):
                    digest.update(block)
        version = digest.hexdigest()[:16]
        final = exports_root / version
        manifest = {"dataset_version": version, "files": rows, "warehouse_snapshot": snapshot,
                    **({"provenance": provenance} if provenance else {})}
        if snapshot is None:
            manifest["warehouse_snapshot_note"] = NO_SNAPSHOT
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        reused = final.exists()
        if reused:
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(version, final, {n: final / n for n in files}, rows, reused, snapshot)


def exported_snapshots(exports_root: Path) -> set[int]:
    """The warehouse snapshots the exports under ``exports_root`` were read from (their manifests'
    ``warehouse_snapshot``; the file backend's manifests name none): lake maintenance keeps them,
    so ``flywheel datasets --snapshot N`` keeps working. A manifest that cannot be read is an error
    naming it (keeping too few snapshots would lose an export's source for good)."""
    snapshots: set[int] = set()
    if not exports_root.is_dir():
        return snapshots
    for path in sorted(exports_root.glob("*/manifest.json")):
        if path.parent.name.startswith(".tmp-"):
            continue  # an export being written: it records its snapshot once renamed
        try:
            snapshot = json.loads(path.read_text(encoding="utf-8")).get("warehouse_snapshot")
        except (OSError, ValueError, AttributeError) as exc:
            raise ValueError(f"cannot read the export manifest {path}: {exc}") from None
        if snapshot is None:
            continue
        if isinstance(snapshot, bool) or not isinstance(snapshot, int) or snapshot < 0:
            raise ValueError(f"the export manifest {path} names no valid warehouse_snapshot: {snapshot!r}")
        snapshots.add(snapshot)
    return snapshots
