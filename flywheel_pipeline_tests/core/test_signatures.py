"""Webhook signatures with real keys made by the cryptography library."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flywheel_pipeline.core.signatures import (hubspot_v3_signature, load_sendgrid_public_key, verify_hubspot_v3,
                                               verify_sendgrid)

NOW = 1_767_000_000.0
BODY = (json.dumps([{"email": "a@b.io", "event": "open", "sg_event_id": "x", "timestamp": 1}]) + "\r\n").encode()


@pytest.fixture(scope="module")
def keys():
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, load_sendgrid_public_key(base64.b64encode(der).decode())


def sign(private, timestamp: str, body: bytes) -> str:
    return base64.b64encode(private.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()


def test_sendgrid_valid_signature_over_the_raw_body_with_its_trailing_crlf(keys):
    private, public = keys
    ts = str(int(NOW))
    signature = sign(private, ts, BODY)
    assert verify_sendgrid(public, signature, ts, BODY, now=NOW).ok
    stripped = verify_sendgrid(public, signature, ts, BODY.rstrip(b"\r\n"), now=NOW)
    assert not stripped.ok and stripped.reason == "bad signature"  # the CRLF is part of what was signed


@pytest.mark.parametrize("tamper, reason", [
    (lambda s, t, b: (s, t, b.replace(b"open", b"click")), "bad signature"),
    (lambda s, t, b: (s, str(int(t) + 1), b), "bad signature"),
    (lambda s, t, b: (s, str(int(t) - 3600), b), "stale timestamp"),
    (lambda s, t, b: ("%%%", t, b), "not base64"),
    (lambda s, t, b: (None, t, b), "missing"),
    (lambda s, t, b: (s, "soon", b), "not a number"),
])
def test_sendgrid_rejections_say_why(keys, tamper, reason):
    private, public = keys
    ts = str(int(NOW))
    signature, timestamp, body = tamper(sign(private, ts, BODY), ts, BODY)
    verdict = verify_sendgrid(public, signature, timestamp, body, now=NOW)
    assert not verdict.ok and reason in verdict.reason


def test_sendgrid_age_check_can_be_disabled_and_bad_keys_are_refused(keys):
    private, public = keys
    old = str(int(NOW) - 86_400)
    assert verify_sendgrid(public, sign(private, old, BODY), old, BODY, max_age_s=0, now=NOW).ok
    with pytest.raises(ValueError, match="base64 DER"):
        load_sendgrid_public_key("not a key")
    rsa_like = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError, match="P-256"):
        load_sendgrid_public_key(base64.b64encode(rsa_like).decode())


def test_hubspot_v3():
    secret, uri = "app-secret", "https://hooks.example.com/webhooks/hubspot?x=1"
    body = b'[{"objectId":1,"propertyName":"dealstage","propertyValue":"closedwon"}]'
    ts = str(int(NOW * 1000))
    sig = hubspot_v3_signature(secret, "POST", uri, body, ts)
    assert verify_hubspot_v3(secret, "POST", uri, body, sig, ts, now=NOW).ok
    assert verify_hubspot_v3(secret, "POST", uri, body + b" ", sig, ts, now=NOW).reason == "bad signature"
    assert verify_hubspot_v3(secret, "POST", uri + "&y=2", body, sig, ts, now=NOW).reason == "bad signature"
    assert "stale" in verify_hubspot_v3(secret, "POST", uri, body, sig, ts, now=NOW + 301).reason
    assert verify_hubspot_v3("other", "POST", uri, body, sig, ts, now=NOW).reason == "bad signature"
