"""PII redaction for every text that leaves the warehouse (training exports).

:func:`redact` replaces, in this order:

* e-mail addresses, also in angle brackets (``<ada@acme.com>``) and obfuscated
  (``ada [at] acme [dot] com``, ``ada(at)acme.com``, ``ada at acme dot com``) → ``[EMAIL]``
* URLs that carry personal tokens (a query string, or a path segment of 12+ characters that
  mixes letters and digits, like tracking ids) → ``[URL]``; plain URLs stay
* phone numbers in national and international formats (7–15 digits with spaces, dots,
  dashes or parentheses, optional ``+``/``00`` prefix) → ``[PHONE]``; ISO dates, times,
  decimals, prices and bare digit runs that do not start with ``+`` or ``0`` (ids) do not match
* the recipient's and sender's names given by the message record → ``{{first_name}}``,
  ``{{last_name}}``, ``{{sender_name}}`` (whole words, case-insensitive)

Merge fields already in the text (``{{first_name}}``, ``{{ company }}``) are never touched.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

_MERGE_FIELD = re.compile(r"\{\{[^{}]*\}\}")
_EMAIL = re.compile(r"<?\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b>?")
_AT = r"(?:\s*[\[\(\{]\s*at\s*[\]\)\}]\s*|\s+at\s+)"
_DOT = r"(?:\s*[\[\(\{]\s*dot\s*[\]\)\}]\s*|\s+dot\s+|\.)"
_OBFUSCATED_EMAIL = re.compile(
    rf"\b[A-Za-z0-9._%+-]+{_AT}[A-Za-z0-9-]+(?:{_DOT}[A-Za-z0-9-]+)*{_DOT}[A-Za-z]{{2,}}\b", re.IGNORECASE)
_URL = re.compile(r"\bhttps?://[^\s<>\"')\]]+", re.IGNORECASE)
_TOKEN_SEGMENT = re.compile(r"^(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9_-]{12,}$|^[0-9a-fA-F-]{16,}$")
_PHONE = re.compile(
    r"(?<![\w.+/,$€£:-])"                 # not glued to a word, number, amount or path
    r"(?:(?:\+|00)\d{1,4}[\s.-]?)?"        # optional country code
    r"(?:\(\d{1,5}\)[\s.-]?)?"            # optional area code in parentheses
    r"\d[\d\s.-]{5,}\d"                   # the rest: digits with separators
    r"(?![\w/-])"
)
_ISO_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")


@dataclass
class Redaction:
    text: str
    counts: Counter = field(default_factory=Counter)


def _url_has_personal_token(url: str) -> bool:
    head, _, query = url.partition("?")
    if query or "#" in head:
        return True
    path = head.split("://", 1)[-1].split("/", 1)
    segments = path[1].split("/") if len(path) > 1 else []
    return any(_TOKEN_SEGMENT.match(s) for s in segments if s)


def _phone(match: re.Match[str]) -> str | None:
    candidate = match.group(0).strip()
    digits = re.sub(r"\D", "", candidate)
    if not 7 <= len(digits) <= 15:
        return None
    if _ISO_DATE.search(candidate) or re.search(r"\d\.\d{1,2}(?:\s|$)", candidate):
        return None  # a date, or decimals such as "12.5 3.7"
    if re.fullmatch(r"\d+", candidate) and not candidate.startswith(("0", "+")):
        return None  # a bare digit run (an id or an amount), not a phone shape
    if "." in candidate and re.fullmatch(r"\d+\.\d+", candidate):
        return None  # a decimal number
    return "[PHONE]"


def _redact_segment(text: str, names: Mapping[str, str], counts: Counter) -> str:
    def sub(pattern: re.Pattern[str], replacement, kind: str, value: str) -> str:
        def repl(m: re.Match[str]) -> str:
            out = replacement(m) if callable(replacement) else replacement
            if out is None:
                return m.group(0)
            counts[kind] += 1
            return out
        return pattern.sub(repl, value)

    text = sub(_URL, lambda m: "[URL]" if _url_has_personal_token(m.group(0)) else None, "url", text)
    text = sub(_EMAIL, "[EMAIL]", "email", text)
    text = sub(_OBFUSCATED_EMAIL, "[EMAIL]", "email", text)
    text = sub(_PHONE, _phone, "phone", text)
    for placeholder, name in names.items():
        if name and len(name.strip()) >= 2:
            pattern = re.compile(rf"(?<![\w{{]){re.escape(name.strip())}(?![\w}}])", re.IGNORECASE)
            text = sub(pattern, "{{" + placeholder + "}}", "name", text)
    return text


def redact(text: str | None, *, first_name: str | None = None, last_name: str | None = None,
           sender_name: str | None = None) -> Redaction:
    """Redact PII from ``text`` (see the module docstring); merge fields are preserved."""
    counts: Counter = Counter()
    if not text:
        return Redaction(text or "", counts)
    names = {"first_name": first_name or "", "last_name": last_name or "", "sender_name": sender_name or ""}
    # longer names first, so "Ada Lovelace" style overlaps resolve predictably
    names = dict(sorted(names.items(), key=lambda kv: -len(kv[1])))
    out: list[str] = []
    position = 0
    for m in _MERGE_FIELD.finditer(text):
        out.append(_redact_segment(text[position:m.start()], names, counts))
        out.append(m.group(0))
        position = m.end()
    out.append(_redact_segment(text[position:], names, counts))
    return Redaction("".join(out), counts)


def contains_contact_pii(text: str) -> bool:
    """True if an e-mail address or phone number remains (the export's contract check)."""
    if not text:
        return False
    stripped = _MERGE_FIELD.sub(" ", text)
    if _EMAIL.search(stripped) or _OBFUSCATED_EMAIL.search(stripped):
        return True
    return any(_phone(m) for m in _PHONE.finditer(stripped))
