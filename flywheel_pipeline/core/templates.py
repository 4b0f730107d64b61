"""Prompt templates: Jinja2 in a sandboxed environment with StrictUndefined, rendered with a lead's
fields (pure: text in, text or a refusal out; warehouse/templates.py stores them).

The contract with the outreach app is ``LEAD_FIELDS``: the only names a template may use. A
template that names anything else (``{{ budget }}``), or does not render for another reason (a
syntax error, an unsafe attribute the sandbox refuses), is refused when it is added, with the
missing fields named; so a stored template always renders for every lead that has these fields.

Versions are semantic (MAJOR.MINOR.PATCH, core/versioning.py); a stored version never changes.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from flywheel_pipeline.core.versioning import parse as parse_version

# The lead's fields a template may use, with what each is and an example (the outreach app fills
# every one for every lead; an unknown value is an empty string, never a missing field).
LEAD_FIELDS: dict[str, tuple[str, str]] = {
    "first_name": ("the lead's first name", "Ada"),
    "last_name": ("the lead's last name", "Lovelace"),
    "company": ("the lead's company", "Analytical Engines Ltd"),
    "industry": ("the company's industry", "saas"),
    "role": ("the lead's role", "vp_sales"),
    "sender_name": ("who signs the message", "Jordan"),
}

TEMPLATE_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MAX_TEMPLATE_CHARS = 20_000

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)


class TemplateRefused(ValueError):
    """A template that cannot be stored: ``missing`` names the fields it uses that a lead lacks."""

    def __init__(self, message: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing


def sample_lead() -> dict[str, str]:
    return {name: example for name, (_, example) in LEAD_FIELDS.items()}


def fields_used(text: str) -> set[str]:
    """Every variable the template reads (in any branch), or a refusal for a syntax error."""
    try:
        return set(meta.find_undeclared_variables(_ENV.parse(text)))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateRefused(f"template syntax error on line {exc.lineno}: {exc.message}") from None


def check_template(text: str) -> tuple[str, ...]:
    """The lead fields a valid template uses (sorted); TemplateRefused otherwise."""
    if not text.strip():
        raise TemplateRefused("the template is empty")
    if len(text) > MAX_TEMPLATE_CHARS:
        raise TemplateRefused(f"the template has {len(text):,} characters; at most {MAX_TEMPLATE_CHARS:,}")
    used = fields_used(text)
    missing = tuple(sorted(used - set(LEAD_FIELDS)))
    if missing:
        raise TemplateRefused(f"the template uses fields a lead does not have: {', '.join(missing)} "
                              f"(lead fields: {', '.join(LEAD_FIELDS)})", missing)
    try:
        render(text, sample_lead())
    except TemplateRefused:
        raise
    return tuple(sorted(used))


def render(text: str, lead: dict[str, object]) -> str:
    """The template rendered with the lead's fields (only LEAD_FIELDS are passed; a field the lead
    lacks is a TemplateRefused naming it)."""
    values = {name: "" if lead.get(name) is None else str(lead[name]) for name in LEAD_FIELDS if name in lead}
    try:
        return _compiled(text).render(values)
    except jinja2.UndefinedError as exc:
        missing = tuple(sorted(fields_used(text) - set(values)))
        raise TemplateRefused(f"the template does not render: {exc.message}", missing) from None
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateRefused(f"the template does something the sandbox refuses: {exc}") from None
    except jinja2.TemplateError as exc:
        raise TemplateRefused(f"the template does not render: {exc}") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise TemplateRefused(f"the template does not render: {exc}") from None


@functools.lru_cache(maxsize=64)
def _compiled(text: str) -> jinja2.Template:
    """A template compiled once (rendering it for every lead is then cheap)."""
    return _ENV.from_string(text)


def check_id(template_id: str) -> str:
    if not TEMPLATE_ID.match(template_id or ""):
        raise TemplateRefused(f"template name {template_id!r}: lower-case letters, digits, '_', '-', '.', at most "
                              "64 characters, starting with a letter or digit")
    return template_id


def check_version(version: str, latest: str | None = None) -> str:
    """A semantic version, greater than ``latest`` (the template's highest) when given."""
    try:
        parsed = parse_version(version)
    except ValueError as exc:
        raise TemplateRefused(str(exc)) from None
    if latest is not None and parsed <= parse_version(latest):
        raise TemplateRefused(f"version {version} must be greater than the latest {latest}")
    return version


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def arm_key(template_id: str, version: str) -> str:
    """How an experiment names a template arm: ``<template_id>@<version>``."""
    return f"{template_id}@{version}"


def split_arm_key(key: str) -> tuple[str, str]:
    template_id, _, version = key.rpartition("@")
    return template_id, version


# ---- length instructions: what the prompt optimizer writes and a model (the simulated one too) reads ----

LENGTH_LINE = re.compile(r"^Keep the body of the email (?:between (\d+) and (\d+)|under (\d+)) words\.[^\n]*$",
                         re.MULTILINE)


@dataclass(frozen=True)
class WordRange:
    low: int  # inclusive
    high: int | None  # inclusive; None: no upper bound

    def contains(self, words: int) -> bool:
        return words >= self.low and (self.high is None or words <= self.high)

    def instruction(self) -> str:
        if self.low <= 0 and self.high is not None:
            return f"Keep the body of the email under {self.high + 1} words."
        if self.high is None:  # "at least" never helped anyone write shorter; say the range we know
            raise ValueError("an open-ended length is not an instruction the optimizer writes")
        return f"Keep the body of the email between {self.low} and {self.high} words."


def length_instruction(text: str) -> WordRange | None:
    """The length instruction in a rendered prompt (the optimizer's wording), if any."""
    m = None
    for m in LENGTH_LINE.finditer(text):
        pass
    if m is None:
        return None
    if m.group(3):
        return WordRange(0, int(m.group(3)) - 1)
    return WordRange(int(m.group(1)), int(m.group(2)))


def with_length_instruction(text: str, words: WordRange, reason: str) -> str:
    """The template with its length instruction replaced (or added as its last paragraph)."""
    line = f"{words.instruction()} {reason}".rstrip()
    if LENGTH_LINE.search(text):
        return LENGTH_LINE.sub(line.replace("\\", "\\\\"), text)
    return text.rstrip("\n") + "\n\n" + line + "\n"
