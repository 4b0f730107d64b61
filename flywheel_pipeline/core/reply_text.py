"""The replier's own words: a reply body with our quoted message, forwarded mail, signatures
and HTML taken away, so only what the person wrote is classified.

Handles bodies that arrive as bytes in any encoding (UTF-8, else Windows-1252, never an
error), HTML-only mail, the quote headers of the common clients in several languages (Gmail
"On ... wrote:", also wrapped over two lines; Apple Mail; Thunderbird; Outlook "From: ...
Sent: ..." blocks and "-----Original Message-----"; German, French, Spanish, Dutch,
Portuguese, Italian and Scandinavian variants), ``>`` quoting, forwarded messages, and
signatures (``--``, sign-offs followed by a short block, "Sent from my ...", legal
disclaimers). Pure functions, no I/O.
"""

from __future__ import annotations

import html
import re

# Longest own text kept: a reply's answer is at its top; a runaway body (a whole thread
# pasted without quote markers) is cut rather than classified at length.
MAX_OWN_CHARS = 4_000

# "On <date> <name> wrote:" in the languages we see; the date/name part may be long.
_WROTE_LINE = re.compile(
    r"^\s*(on|am|le|el|op|em|il giorno|den|på|w dniu|dne)\b.{0,300}?"
    r"(wrote|schrieb|a écrit|escribió|escribio|schreef|escreveu|ha scritto|skrev|napisał|napsal)"
    r"(\s.{0,200})?\s*:\s*$",
    re.IGNORECASE)
# Thunderbird / others: "Name wrote:" or "Name <addr> wrote on <date>:"
_NAME_WROTE_LINE = re.compile(
    r"^\s*[^\s].{0,200}\b(wrote|schrieb|a écrit|escribió|schreef|escreveu|ha scritto|skrev)\b"
    r"( on .{0,80})?\s*:\s*$", re.IGNORECASE)
_SEPARATOR_LINE = re.compile(
    r"^\s*(-{2,}\s*(original message|forwarded message|ursprüngliche nachricht|weitergeleitete nachricht|"
    r"message d'origine|message transféré|mensaje original|mensaje reenviado|oorspronkelijk bericht|"
    r"doorgestuurd bericht|mensagem original|mensagem encaminhada|messaggio originale|"
    r"messaggio inoltrato)\s*-{2,}|begin forwarded message:|_{8,}|={8,})\s*$", re.IGNORECASE)
# Outlook-style header blocks: a "From:" line followed soon by a "Sent:"/"Date:"/"To:" line.
_FROM_LINE = re.compile(r"^\s*\*?(from|von|de|van|da|från|fra|od)\s*\*?\s*:", re.IGNORECASE)
_HEADER_LINE = re.compile(
    r"^\s*\*?(sent|date|to|subject|gesendet|datum|an|betreff|envoyé|date|à|objet|enviado|fecha|para|asunto|"
    r"verzonden|aan|onderwerp|inviato|data|a|oggetto|enviada em|assunto|skickat|till|ämne)\s*\*?\s*:",
    re.IGNORECASE)

# Signature starts: a line that begins what is not the reply.
_SIGNATURE_LINE = re.compile(
    r"^\s*(--\s*|sent from my\b.*|sent from (outlook|mail|yahoo|gmail)\b.*|get outlook for\b.*|"
    r"von meinem .* gesendet.*|envoyé de mon\b.*|enviado desde mi\b.*|verzonden vanaf mijn\b.*|"
    r"inviato da\b.*|enviado do meu\b.*|"
    r"confidentiality notice\b.*|this (e-?mail|message) (and any attachments )?(is|are|may)\b.*|"
    r"disclaimer\s*:.*|please consider the environment\b.*|the information (contained )?in this\b.*)$",
    re.IGNORECASE)
# A sign-off alone on its line ("Best,", "Thanks!", "Kind regards", "Cheers") ends the reply
# when only a short block (a name, a title, a phone number) follows it.
_SIGN_OFF_LINE = re.compile(
    r"^\s*(best( regards| wishes)?|regards|kind regards|warm regards|many thanks|thanks( again| so much)?|"
    r"thank you|cheers|all the best|sincerely|br|rgds|mit freundlichen grüßen|viele grüße|beste grüße|"
    r"gruß|lg|cordialement|bien à vous|saludos|un saludo|atentamente|met vriendelijke groet|groeten|"
    r"groet|atenciosamente|abraços|cordiali saluti|saluti)\s*[,.!]?\s*$",
    re.IGNORECASE)
_SIGNATURE_BLOCK_MAX_LINES = 8

_HTML_TAG = re.compile(r"<[^>]{0,2000}>")
_HTML_LIKE = re.compile(r"<\s*(html|body|div|p|br|table|span|blockquote)\b", re.IGNORECASE)
_HTML_DROP = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_HTML_QUOTE = re.compile(r"<blockquote\b.*?(</blockquote\s*>|$)", re.IGNORECASE | re.DOTALL)
_HTML_GMAIL_QUOTE = re.compile(r"<div[^>]*class=\"?gmail_quote.*", re.IGNORECASE | re.DOTALL)
_HTML_BREAK = re.compile(r"<\s*(br|/p|/div|/tr|/li|/h\d)\b[^>]*>", re.IGNORECASE)


def decode_body(raw: str | bytes | bytearray | None) -> str:
    """Text of a body that may arrive as bytes: UTF-8 (a byte order mark dropped), else
    Windows-1252 with undefined bytes replaced. Never raises."""
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    data = bytes(raw)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def html_to_text(body: str) -> str:
    """Visible text of an HTML body, without quoted blocks (``<blockquote>``, Gmail's
    ``gmail_quote``), scripts and styles."""
    body = _HTML_DROP.sub(" ", body)
    body = _HTML_GMAIL_QUOTE.sub(" ", body)
    body = _HTML_QUOTE.sub(" ", body)
    body = _HTML_BREAK.sub("\n", body)
    body = _HTML_TAG.sub(" ", body)
    return html.unescape(body)


def _is_outlook_header(lines: list[str], i: int) -> bool:
    if not _FROM_LINE.match(lines[i]):
        return False
    return any(_HEADER_LINE.match(line) for line in lines[i + 1:i + 5])


def _quote_start(lines: list[str]) -> int:
    """Index of the first line that belongs to quoted or forwarded mail (len(lines) if none)."""
    for i, line in enumerate(lines):
        if _SEPARATOR_LINE.match(line) or _WROTE_LINE.match(line) or _is_outlook_header(lines, i):
            return i
        if i + 1 < len(lines) and _WROTE_LINE.match(line + " " + lines[i + 1].strip()):
            return i  # Gmail wraps a long "On ... <address> wrote:" line
        if _NAME_WROTE_LINE.match(line) and (i + 1 == len(lines) or not lines[i + 1].strip()
                                             or lines[i + 1].lstrip().startswith(">")):
            return i
    return len(lines)


def _signature_start(lines: list[str]) -> int:
    """Index where the signature begins (len(lines) if none). A sign-off on the first line
    does not count, so a reply that is only "Thanks." keeps its words."""
    for i, line in enumerate(lines):
        if _SIGNATURE_LINE.match(line):
            return i
        if i > 0 and _SIGN_OFF_LINE.match(line):
            rest = [r for r in lines[i + 1:] if r.strip()]
            if len(rest) <= _SIGNATURE_BLOCK_MAX_LINES and all(len(r) <= 80 for r in rest):
                return i
    return len(lines)


def own_text(raw: str | bytes | bytearray | None) -> str:
    """What the replier wrote: decoded, HTML made text, quoted/forwarded mail and the
    signature removed, ``>`` lines dropped, whitespace tidied, at most MAX_OWN_CHARS."""
    text = decode_body(raw).replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    if _HTML_LIKE.search(text):
        text = html_to_text(text)
    text = text.replace("\u00a0", " ").replace("\u200b", "")
    lines = text.split("\n")
    lines = lines[:_quote_start(lines)]
    lines = [line for line in lines if not line.lstrip().startswith(">")]
    lines = lines[:_signature_start(lines)]
    own = "\n".join(line.rstrip() for line in lines).strip()
    own = re.sub(r"\n{3,}", "\n\n", own)
    return own[:MAX_OWN_CHARS]
