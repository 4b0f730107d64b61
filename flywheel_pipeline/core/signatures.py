"""Webhook signature verification, over the raw request bytes (verify before parsing).

* SendGrid Signed Event Webhook: ECDSA P-256 with SHA-256 over ``timestamp + raw body``; the
  public key as SendGrid shows it (base64 of the DER SubjectPublicKeyInfo), the signature
  base64 DER from ``X-Twilio-Email-Event-Webhook-Signature``, the timestamp from
  ``X-Twilio-Email-Event-Webhook-Timestamp``. The body is used byte for byte: stripping a
  trailing CRLF breaks SendGrid's own test vector.
* HubSpot signature v3: base64 HMAC-SHA256 with the app's client secret over
  ``method + full URI + raw body + timestamp`` (``X-HubSpot-Signature-v3``,
  ``X-HubSpot-Request-Timestamp`` in milliseconds); requests more than 5 minutes old (or ahead) are refused.
  HubSpot signs the URI with a fixed set of percent-escapes decoded (:func:`hubspot_signed_uri`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

HUBSPOT_MAX_AGE_S = 300
# the escapes HubSpot decodes in the request URI before signing (its "validating requests" guide)
_HUBSPOT_URI_DECODE = {"%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$", "%27": "'",
                       "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";"}


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""


def load_sendgrid_public_key(public_key_b64: str) -> ec.EllipticCurvePublicKey:
    try:
        key = load_der_public_key(base64.b64decode(public_key_b64.strip(), validate=True))
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"not a base64 DER public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("SendGrid's verification key must be an ECDSA P-256 public key")
    return key


def verify_sendgrid(key: ec.EllipticCurvePublicKey, signature_b64: str | None, timestamp: str | None,
                    raw_body: bytes, *, max_age_s: float = 300, now: float | None = None) -> Verdict:
    if not signature_b64 or not timestamp:
        return Verdict(False, "missing signature or timestamp header")
    try:
        sent = float(timestamp)
    except ValueError:
        return Verdict(False, "timestamp header is not a number")
    if not math.isfinite(sent):  # abs(nan) > max_age_s is false: refuse it before comparing
        return Verdict(False, "timestamp header is not a finite number")
    if max_age_s > 0:
        age = (now if now is not None else time.time()) - sent
        if abs(age) > max_age_s:
            return Verdict(False, f"stale timestamp ({age:.0f}s old, tolerance {max_age_s:g}s)")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        key.verify(signature, timestamp.encode() + raw_body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError):
        return Verdict(False, "signature is not base64")
    except InvalidSignature:
        return Verdict(False, "bad signature")
    return Verdict(True)


def hubspot_signed_uri(uri: str) -> str:
    """The URI as HubSpot signs it: the escapes of ``_HUBSPOT_URI_DECODE`` decoded (either case)."""
    out, i = [], 0
    while i < len(uri):
        escape = uri[i:i + 3].upper()
        if escape in _HUBSPOT_URI_DECODE:
            out.append(_HUBSPOT_URI_DECODE[escape])
            i += 3
        else:
            out.append(uri[i])
            i += 1
    return "".join(out)


def hubspot_v3_signature(client_secret: str, method: str, uri: str, raw_body: bytes, timestamp_ms: str) -> str:
    message = method.upper().encode() + uri.encode() + raw_body + timestamp_ms.encode()
    digest = hmac.new(client_secret.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify_hubspot_v3(client_secret: str, method: str, uri: str, raw_body: bytes, signature: str | None,
                      timestamp_ms: str | None, *, now: float | None = None) -> Verdict:
    if not signature or not timestamp_ms:
        return Verdict(False, "missing X-HubSpot-Signature-v3 or X-HubSpot-Request-Timestamp")
    try:
        age = (now if now is not None else time.time()) - int(timestamp_ms) / 1000
    except ValueError:
        return Verdict(False, "timestamp header is not a number")
    if abs(age) > HUBSPOT_MAX_AGE_S:
        return Verdict(False, f"stale timestamp ({age:.0f}s old, HubSpot allows {HUBSPOT_MAX_AGE_S}s)")
    expected = hubspot_v3_signature(client_secret, method, uri, raw_body, timestamp_ms)
    if not hmac.compare_digest(expected, signature):
        return Verdict(False, "bad signature")
    return Verdict(True)
