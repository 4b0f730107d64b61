"""Fine-tuning file formats (OpenAI-style chat SFT and preference/DPO) and their validator.

The validator does what OpenAI's chat fine-tuning data-prep guide checks, and fixes what it
gets wrong: it does not crash on a message that is not an object; it accepts assistant
tool-call messages whose content is null (the guide counts them as "missing content"); it
knows the ``tool`` role and ``tool_calls``/``tool_call_id`` keys; it requires the last
message to be the assistant's (the guide does not); it checks ``weight`` values; and it
counts tokens with the target model's own encoding (the guide uses cl100k_base for all).

Error kinds (any makes the file invalid) and warning kinds are the constants below.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel_pipeline.core.models import DEFAULT_MODEL
from flywheel_pipeline.core.tokens import TokenCounter, base_model, count_chat_tokens, counter_for_model

# ---- building examples ----------------------------------------------------------------------


def chat_example(system: str | None, user: str, assistant: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages}


def preference_example(system: str | None, user: str, preferred: str, non_preferred: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    return {"input": {"messages": messages},
            "preferred_output": [{"role": "assistant", "content": preferred}],
            "non_preferred_output": [{"role": "assistant", "content": non_preferred}]}


# ---- rules -----------------------------------------------------------------------------------

ERROR_KINDS = (
    "not_utf8", "byte_order_mark", "invalid_json", "not_an_object", "unknown_example_key", "missing_messages",
    "message_not_an_object",
    "message_missing_role", "message_missing_content", "message_unknown_key", "unknown_role",
    "invalid_content", "invalid_tool_call", "no_assistant_message", "last_message_not_assistant",
    "invalid_weight",
    # preference format
    "missing_input", "not_single_turn", "output_not_final_assistant", "identical_outputs",
)
WARNING_KINDS = ("missing_system_message", "missing_user_message", "over_token_limit")

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call"}
CHAT_KEYS = {"messages", "tools", "parallel_tool_calls", "functions"}
PREFERENCE_KEYS = {"input", "preferred_output", "non_preferred_output"}


def _valid_content_parts(content: list[Any]) -> bool:
    return bool(content) and all(
        isinstance(p, dict) and (
            (p.get("type") == "text" and isinstance(p.get("text"), str))
            or (p.get("type") == "image_url" and isinstance(p.get("image_url"), dict)))
        for p in content)


def _valid_tool_calls(calls: Any) -> bool:
    return isinstance(calls, list) and bool(calls) and all(
        isinstance(c, dict) and c.get("type", "function") == "function" and isinstance(c.get("id"), str)
        and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
        and isinstance(c["function"].get("arguments"), str)
        for c in calls)


def message_errors(messages: Any) -> list[str]:
    """Errors of a messages list (shared by the chat format and the preference input)."""
    if not isinstance(messages, list) or not messages:
        return ["missing_messages"]
    errors: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            errors.append("message_not_an_object")
            continue
        role = message.get("role")
        if "role" not in message:
            errors.append("message_missing_role")
        elif role not in ROLES:
            errors.append("unknown_role")
        if set(message) - MESSAGE_KEYS:
            errors.append("message_unknown_key")
        has_calls = "tool_calls" in message or "function_call" in message
        if "tool_calls" in message and not _valid_tool_calls(message["tool_calls"]):
            errors.append("invalid_tool_call")
        content = message.get("content")
        if "content" not in message and not has_calls:
            errors.append("message_missing_content")
        elif content is None:
            if not (role == "assistant" and has_calls):
                errors.append("message_missing_content")
        elif isinstance(content, str):
            if not content.strip() and not has_calls:
                errors.append("message_missing_content")
        elif not (isinstance(content, list) and _valid_content_parts(content)):
            errors.append("invalid_content")
        if "weight" in message and (message["weight"] not in (0, 1) or isinstance(message["weight"], bool)
                                    or role != "assistant"):
            errors.append("invalid_weight")
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if "assistant" not in roles:
        errors.append("no_assistant_message")
    elif roles and roles[-1] != "assistant":
        errors.append("last_message_not_assistant")
    return errors


def chat_errors(example: Any) -> list[str]:
    if not isinstance(example, dict):
        return ["not_an_object"]
    errors = ["unknown_example_key"] if set(example) - CHAT_KEYS else []
    return errors + message_errors(example.get("messages"))


def _final_assistant(output: Any) -> str | None:
    if (isinstance(output, list) and len(output) == 1 and isinstance(output[0], dict)
            and output[0].get("role") == "assistant" and not set(output[0]) - MESSAGE_KEYS):
        content = output[0].get("content")
        if isinstance(content, str) and content.strip():
            return content
        if output[0].get("tool_calls") and _valid_tool_calls(output[0]["tool_calls"]):
            return json.dumps(output[0]["tool_calls"], sort_keys=True)
    return None


def preference_errors(example: Any) -> list[str]:
    if not isinstance(example, dict):
        return ["not_an_object"]
    errors = ["unknown_example_key"] if set(example) - PREFERENCE_KEYS else []
    source = example.get("input")
    if not isinstance(source, dict) or not isinstance(source.get("messages"), list) or not source["messages"]:
        errors.append("missing_input")
    else:
        messages = source["messages"]
        # the input ends with the user's turn; reuse the message rules on input + a placeholder reply
        errors += [e for e in message_errors(messages + [{"role": "assistant", "content": "x"}])
                   if e not in ("no_assistant_message", "last_message_not_assistant")]
        roles = [m.get("role") for m in messages if isinstance(m, dict)]
        if roles.count("user") != 1 or "assistant" in roles or "tool" in roles or roles[-1:] != ["user"]:
            errors.append("not_single_turn")
    preferred = _final_assistant(example.get("preferred_output"))
    non_preferred = _final_assistant(example.get("non_preferred_output"))
    if preferred is None or non_preferred is None:
        errors.append("output_not_final_assistant")
    elif preferred.strip() == non_preferred.strip():
        errors.append("identical_outputs")
    return errors


def detect_kind(example: Any) -> str:
    return "preference" if isinstance(example, dict) and "preferred_output" in example else "chat"


# ---- limits, prices and the epoch heuristic ---------------------------------------------------

# Training context per example and list price per 1M training tokens (USD), as OpenAI lists
# them for supervised fine-tuning; override the price when estimating for another host.
MODEL_LIMITS: dict[str, tuple[int, float]] = {
    "gpt-4o-mini-2024-07-18": (65_536, 3.00),
    "gpt-4o-2024-08-06": (65_536, 25.00),
    "gpt-4.1-2025-04-14": (65_536, 25.00),
    "gpt-4.1-mini-2025-04-14": (65_536, 5.00),
    "gpt-4.1-nano-2025-04-14": (65_536, 1.50),
    "gpt-3.5-turbo-0125": (16_385, 8.00),
}
DEFAULT_LIMIT = 65_536
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25
MIN_EXAMPLES = 10


def _family(model: str) -> str:
    """``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``; ``gpt-3.5-turbo-0125`` -> ``gpt-3.5-turbo``."""
    return re.sub(r"-(\d{4}-\d{2}-\d{2}|\d{4})$", "", model)


def model_limits(model: str) -> tuple[int, float | None]:
    """(training token limit per example, list price per 1M training tokens or None)."""
    base = base_model(model)
    if base in MODEL_LIMITS:
        return MODEL_LIMITS[base]
    for name, limits in MODEL_LIMITS.items():
        if _family(name) == _family(base):
            return limits
    return DEFAULT_LIMIT, None


def recommended_epochs(n_examples: int) -> int:
    """OpenAI's default-epoch heuristic: aim for 100 to 25,000 example-epochs. Unlike the
    data-prep guide, which floors 100 / n and so can stay under 100, this rounds up."""
    if n_examples <= 0:
        return 0
    epochs = TARGET_EPOCHS
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        epochs = min(MAX_DEFAULT_EPOCHS, -(-MIN_TARGET_EXAMPLES // n_examples))
    elif n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        epochs = max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return epochs


# ---- whole files -------------------------------------------------------------------------------


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0, "p50": 0, "p90": 0, "max": 0}
    ordered = sorted(values)

    def pct(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {"min": ordered[0], "mean": round(statistics.fmean(ordered), 1), "p50": pct(0.5), "p90": pct(0.9),
            "max": ordered[-1]}


@dataclass
class ValidationReport:
    path: str
    kind: str
    model: str
    token_method: str
    examples: int = 0
    errors: Counter = field(default_factory=Counter)
    warnings: Counter = field(default_factory=Counter)
    first_error_lines: dict[str, int] = field(default_factory=dict)
    example_tokens: list[int] = field(default_factory=list)
    assistant_tokens: list[int] = field(default_factory=list)
    token_limit: int = DEFAULT_LIMIT
    price_per_million: float | None = None
    epochs: int | None = None

    @property
    def ok(self) -> bool:
        return not self.errors and self.examples >= MIN_EXAMPLES

    @property
    def n_epochs(self) -> int:
        return self.epochs or recommended_epochs(self.examples)

    @property
    def billing_tokens_per_epoch(self) -> int:
        return sum(min(self.token_limit, t) for t in self.example_tokens)

    def as_dict(self) -> dict[str, Any]:
        estimated = self.billing_tokens_per_epoch * self.n_epochs
        return {
            "path": self.path, "kind": self.kind, "model": self.model, "valid": self.ok,
            "examples": self.examples, "minimum_examples": MIN_EXAMPLES,
            "errors": dict(self.errors), "first_error_lines": self.first_error_lines,
            "warnings": dict(self.warnings), "token_counting": self.token_method,
            "tokens_per_example": _stats(self.example_tokens),
            "tokens_per_assistant_turn": _stats(self.assistant_tokens),
            "token_limit": self.token_limit, "examples_over_limit": self.warnings.get("over_token_limit", 0),
            "epochs": self.n_epochs, "billing_tokens_per_epoch": self.billing_tokens_per_epoch,
            "estimated_training_tokens": estimated,
            "estimated_cost_usd": None if self.price_per_million is None
            else round(estimated * self.price_per_million / 1e6, 2),
        }

    def to_text(self, *, estimates: bool = True) -> str:
        """The report in lines: the verdict, errors and warnings, then (with ``estimates``) the
        token statistics and the training token and cost estimate."""
        d = self.as_dict()
        lines = [f"{self.path}: {'VALID' if self.ok else 'INVALID'} {self.kind} file, {self.examples} examples"]
        if self.examples < MIN_EXAMPLES:
            lines.append(f"  error: at least {MIN_EXAMPLES} examples are required, found {self.examples}")
        for kind, count in sorted(self.errors.items()):
            lines.append(f"  error {kind}: {count} (first on line {self.first_error_lines[kind]})")
        for kind, count in sorted(self.warnings.items()):
            lines.append(f"  warning {kind}: {count}")
        if not estimates:
            return "\n".join(lines)
        t, a = d["tokens_per_example"], d["tokens_per_assistant_turn"]
        lines.append(f"  tokens per example ({self.token_method}): min {t['min']} mean {t['mean']} "
                     f"p50 {t['p50']} p90 {t['p90']} max {t['max']}")
        lines.append(f"  tokens per assistant turn: min {a['min']} mean {a['mean']} p50 {a['p50']} "
                     f"p90 {a['p90']} max {a['max']}")
        lines.append(f"  over the {self.token_limit}-token limit of {self.model}: {d['examples_over_limit']}")
        cost = "unknown price" if d["estimated_cost_usd"] is None else f"about ${d['estimated_cost_usd']:.2f}"
        lines.append(f"  {d['epochs']} epochs x {d['billing_tokens_per_epoch']} tokens = "
                     f"{d['estimated_training_tokens']} training tokens, {cost}")
        return "\n".join(lines)


class _Unreadable:
    """Marks a line that could not be parsed; ``kind`` is its error kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


_NOT_UTF8, _BYTE_ORDER_MARK, _INVALID_JSON = (_Unreadable(k) for k in ("not_utf8", "byte_order_mark",
                                                                          "invalid_json"))


def _lines(path: Path) -> Iterator[tuple[int, str | _Unreadable]]:
    """Non-blank lines, decoded one by one, so that a line that is not UTF-8 (or starts with
    a byte order mark, which strict JSON parsers such as Python's reject) is reported with its
    number."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                yield number, _BYTE_ORDER_MARK
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, _NOT_UTF8
                continue
            if line.strip():
                yield number, line


def validate_examples(examples: Iterable[tuple[int, Any]], *, path: str = "<examples>", kind: str = "auto",
                      model: str = DEFAULT_MODEL, epochs: int | None = None,
                      price_per_million: float | None = None, counter: TokenCounter | None = None
                      ) -> ValidationReport:
    """Validate (line number, parsed object) pairs; an ``_Unreadable`` marks a line that could
    not be parsed."""
    counter = counter or counter_for_model(model)
    limit, price = model_limits(model)
    report = ValidationReport(path, kind, model, counter.method, token_limit=limit,
                              price_per_million=price_per_million if price_per_million is not None else price,
                              epochs=epochs)
    for number, example in examples:
        report.examples += 1
        if isinstance(example, _Unreadable):
            errors = [example.kind]
        else:
            if report.kind == "auto":
                report.kind = detect_kind(example)
            errors = preference_errors(example) if report.kind == "preference" else chat_errors(example)
        for error in errors:
            report.errors[error] += 1
            report.first_error_lines.setdefault(error, number)
        if errors:
            continue
        if report.kind == "preference":
            messages = example["input"]["messages"]
            tokens = [count_chat_tokens(counter, messages + out) for out in
                      (example["preferred_output"], example["non_preferred_output"])]
            total = max(tokens)
            assistant = [counter.count(o[0].get("content") or "") for o in
                         (example["preferred_output"], example["non_preferred_output"])]
        else:
            messages = example["messages"]
            total = count_chat_tokens(counter, messages)
            assistant = [counter.count(m["content"]) for m in messages
                         if m.get("role") == "assistant" and isinstance(m.get("content"), str)]
        roles = {m.get("role") for m in messages}
        if not roles & {"system", "developer"}:
            report.warnings["missing_system_message"] += 1
        if "user" not in roles:
            report.warnings["missing_user_message"] += 1
        if total > limit:
            report.warnings["over_token_limit"] += 1
        report.example_tokens.append(total)
        report.assistant_tokens.extend(assistant)
    if report.kind == "auto":
        report.kind = "chat"
    return report


def _parse(lines: Iterable[tuple[int, str | _Unreadable]]) -> Iterator[tuple[int, Any]]:
    for number, line in lines:
        if isinstance(line, _Unreadable):
            yield number, line
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError:
            yield number, _INVALID_JSON


def validate_file(path: str | Path, **kwargs: Any) -> ValidationReport:
    """Validate a JSONL fine-tuning file, streaming it line by line."""
    path = Path(path)
    return validate_examples(_parse(_lines(path)), path=str(path), **kwargs)
