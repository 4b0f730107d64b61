"""``flywheel replies ...``: reply understanding from the command line.

``flywheel replies eval [--classifier NAME] [--file FILE] [--split measuring|tuning|all]
[--errors N]`` prints a classifier's precision and recall per intent and for positive replies,
each with a 95% Wilson interval, on the shipped set's measuring split (default) or on a
labelled JSONL file of one's own (format: core/reply_eval_set.py, docs/replies.md). Exit 0
when it printed the metrics, 2 when the file or the classifier name cannot be used.
"""

from __future__ import annotations

import argparse
import sys

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


def add_replies_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``flywheel replies`` and its subcommands on the ``flywheel`` parser."""
    replies = sub.add_parser("replies", help="reply understanding: evaluate reply classifiers")
    commands = replies.add_subparsers(dest="replies_command", required=True)
    p = commands.add_parser("eval", help="precision/recall of a reply classifier on labelled replies")
    p.add_argument("--classifier", help=f"one of {', '.join(sorted(REPLY_CLASSIFIERS))} "
                                        f"(default: the configured one, now {configured_classifier_name()})")
    p.add_argument("--file", help="your own labelled JSONL (id, text, intent[, sentiment, subject, headers]); "
                                  "default: the shipped set")
    p.add_argument("--split", choices=("measuring", "tuning", "all"), default="measuring",
                   help="which part of the shipped set (default measuring; ignored with --file)")
    p.add_argument("--errors", type=int, default=0, metavar="N", help="also list the first N disagreements")
    p.set_defaults(func=cmd_replies_eval)
