"""``flywheel replies ...``: reply understanding from the command line.

``flywheel replies review [--below 0.6] [--limit 200] [--out FILE]`` writes the replies the
classifier was least sure of as labelled JSONL (the predicted intent filled in, to be
corrected by a person); ``flywheel replies correct FILE`` lands such a file's labels in
``landing/reply_labels``, where the next refresh makes them override the classifier (and
teaches the offline model). A reviewed file is also a labelled set for ``replies eval``.

``flywheel replies eval [--classifier NAME] [--file FILE] [--split measuring|tuning|all]
[--errors N]`` prints a classifier's precision and recall per intent and for positive replies,
each with a 95% Wilson interval, on the shipped set's measuring split (default) or on a
labelled JSONL file of one's own (format: core/reply_eval_set.py, docs/replies.md). Exit 0
when it printed the metrics, 2 when the file or the classifier name cannot be used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from flywheel_pipeline.cli.options import add_parser
from flywheel_pipeline.core.reply_classifiers import REPLY_CLASSIFIERS, configured_classifier_name, \
    make_reply_classifier
from flywheel_pipeline.core.reply_eval_set import LabelledFileError, read_labelled_file, shipped_set
from flywheel_pipeline.core.reply_metrics import evaluate, format_evaluation
from flywheel_pipeline.core.reply_text import own_text


def cmd_replies_eval(args: argparse.Namespace) -> int:
    try:
        classifier = make_reply_classifier(args.classifier)
    except ValueError as exc:
        print(f"flywheel replies eval: {exc}", file=sys.stderr)
        return 2
    if args.file:
        try:
            rows = read_labelled_file(args.file)
        except (OSError, LabelledFileError) as exc:
            print(f"flywheel replies eval: {exc}", file=sys.stderr)
            return 2
        title = args.file
    else:
        rows = shipped_set(None if args.split == "all" else args.split)
        title = f"the shipped set ({args.split} split)" if args.split != "all" else "the shipped set (all)"
    if not rows:
        print(f"flywheel replies eval: {title} has no labelled replies", file=sys.stderr)
        return 2
    result = evaluate(classifier, rows)
    print(format_evaluation(result, title=title))
    print(f"\n{result.replies_per_second:,.0f} replies/s")
    if args.errors and result.errors:
        print(f"\nfirst {min(args.errors, len(result.errors))} of {len(result.errors)} disagreements "
              "(gold -> predicted, confidence, the reply's own words):")
        for row, predicted in result.errors[:args.errors]:
            words = own_text(row.text).replace("\n", " ")
            print(f"  {row.id}: {row.intent}/{row.sentiment} -> {predicted.intent}/{predicted.sentiment} "
                  f"{predicted.confidence:.2f}  {words[:100]!r}")
    return 0


def _open_warehouse(command: str):
    import duckdb

    from flywheel_pipeline import paths
    from flywheel_pipeline.warehouse.lake import describe
    from flywheel_pipeline.warehouse.schema import open_configured

    database = describe(paths.warehouse_database())
    if not paths.warehouse_exists():
        print(f"flywheel replies {command}: no warehouse at {database}: run `flywheel refresh` first", file=sys.stderr)
        return None
    try:
        return open_configured(read_only=True)
    except duckdb.IOException as exc:
        print(f"flywheel replies {command}: cannot open {database}: {exc} (a Dagster run holds it: wait for it)",
              file=sys.stderr)
        return None


def cmd_replies_review(args: argparse.Namespace) -> int:
    from flywheel_pipeline.warehouse.reply_labels import replies_to_review

    con = _open_warehouse("review")
    if con is None:
        return 1
    try:
        rows = replies_to_review(con, below=args.below, limit=args.limit)
    finally:
        con.close()
    out = Path(args.out)
    with open(out, "w", encoding="utf-8") as f:
        for row in rows:
            # a reply is (organization_id, id): two organizations may use one reply id
            f.write(json.dumps({"id": row.reply_id, "organization_id": row.organization_id,
                                "intent": row.intent, "sentiment": row.sentiment,
                                "subject": row.subject, "text": row.text or "", "predicted_intent": row.intent,
                                "confidence": row.confidence, "classifier": row.classifier},
                               ensure_ascii=False) + "\n")
    print(f"{len(rows)} replies with confidence under {args.below} written to {out}: correct each 'intent' "
          f"(and 'sentiment' if it is not the intent's), then `flywheel replies correct {out}`")
    return 0


def cmd_replies_correct(args: argparse.Namespace) -> int:
    from flywheel_pipeline import paths

    try:
        raw = Path(args.file).read_bytes()
        rows = read_labelled_file(args.file)
    except (OSError, LabelledFileError) as exc:
        print(f"flywheel replies correct: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"flywheel replies correct: {args.file} has no labelled replies", file=sys.stderr)
        return 2
    digest = hashlib.sha256(raw).hexdigest()
    now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    by = args.by or os.environ.get("USER") or "review"
    # a label names its reply by (organization_id, reply_id) when the file says whose reply it is
    # (review files do); one without organization_id names the only organization with that reply id
    records = [{"label_id": _label_id(digest, row.organization_id, row.id), "reply_id": row.id,
                **({} if row.organization_id is None else {"organization_id": row.organization_id}),
                "intent": row.intent, "sentiment": row.sentiment, "labelled_at": now, "labelled_by": by}
               for row in rows]
    predicted = {}
    for line in raw.decode("utf-8").splitlines():
        line = line.strip().lstrip("\ufeff")
        obj = json.loads(line) if line else {}
        if isinstance(obj, dict) and "predicted_intent" in obj:
            predicted[(obj.get("organization_id"), obj.get("id"))] = obj["predicted_intent"]
    changed = sum(1 for row in rows if predicted.get((row.organization_id, row.id), row.intent) != row.intent)
    from flywheel_pipeline.landing_store import land_records, open_store

    path = land_records(open_store(args.landing or paths.landing_location()), "reply_labels", records)
    print(f"{len(records)} reviewed labels landed in {path} ({changed} differ from the classifier); "
          "`flywheel refresh` applies them")
    return 0


def _label_id(digest: str, organization_id: str | None, reply_id: str) -> str:
    """A reviewed label's id, from the reviewed file and the reply (so landing the same file
    again lands copies); a row without organization_id keeps the id it had before schema 5."""
    parts = (digest, reply_id) if organization_id is None else (digest, organization_id, reply_id)
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``flywheel replies`` and its subcommands on the ``flywheel`` parser."""
    replies = add_parser(sub, "replies", help="reply understanding: evaluate classifiers, review and correct labels")
    commands = replies.add_subparsers(dest="replies_command", required=True)
    p = add_parser(commands, "eval", help="precision/recall of a reply classifier on labelled replies")
    p.add_argument("--classifier", help=f"one of {', '.join(sorted(REPLY_CLASSIFIERS))} "
                                        f"(default: the configured one, now {configured_classifier_name()})")
    p.add_argument("--file", help="your own labelled JSONL (id, text, intent[, sentiment, subject, headers]); "
                                  "default: the shipped set")
    p.add_argument("--split", choices=("measuring", "tuning", "all"), default="measuring",
                   help="which part of the shipped set (ignored with --file)")
    p.add_argument("--errors", type=int, default=0, metavar="N", help="also list the first N disagreements")
    p.set_defaults(func=cmd_replies_eval)
    p = add_parser(commands, "review", help="write the replies the classifier was least sure of, to correct")
    p.add_argument("--below", type=float, default=0.6, help="confidence under which a reply is listed")
    p.add_argument("--limit", type=int, default=200, help="at most this many replies")
    p.add_argument("--out", default="replies_review.jsonl", help="where to write them")
    p.set_defaults(func=cmd_replies_review)
    p = add_parser(commands, "correct", help="land a reviewed file's labels (they override the classifier)")
    p.add_argument("file", help="labelled JSONL: id (the reply_id), intent[, sentiment, organization_id]; "
                                "e.g. a corrected review file")
    p.add_argument("--by", help="who reviewed (default: $USER)")
    p.add_argument("--landing", help="landing zone, a directory or s3://bucket/prefix/ (default: "
                                      "$FLYWHEEL_LANDING, else $FLYWHEEL_HOME/landing)")
    p.set_defaults(func=cmd_replies_correct)
