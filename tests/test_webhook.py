"""Webhook verification without a server: signature, replay window, rotation, url validation."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtms_lifecycle import ConfigurationError, RTMSLifecycleError, WebhookRefused
from rtms_lifecycle.webhook import (
    SECRET_ENV,
    RefusalReason,
    WebhookVerifier,
    labelled_secrets_from_env,
    secrets_from_env,
    sign,
    url_validation_response,
)

from ._live import signed

SECRET = "zoom-secret-token"
OTHER = "another-apps-token"
NOW = 1_700_000_000
BODY = b'{"event":"meeting.rtms_started","event_ts":1700000000000}'
# Computed outside Python: printf 'v0:1700000000:<BODY>' | openssl dgst -sha256 -hmac SECRET
BODY_SIGNATURE = "v0=3c1c56bf1baf79fde6a82449a3aa4233d855c92126466383ca2b319107fcb9d4"
# printf 'qgg8vlvZRS6UYooatFL8Aw' | openssl dgst -sha256 -hmac SECRET
PLAIN_TOKEN = "qgg8vlvZRS6UYooatFL8Aw"
ENCRYPTED_TOKEN = "d9e0d764a78494688ba3f2d5c0ed4ca311394b4834d959759213424d2df961e3"


def verifier(*secrets: str, window: float = 300) -> WebhookVerifier:
    """A verifier whose clock stands still at ``NOW``."""
    return WebhookVerifier(secrets or (SECRET,), replay_window=window, clock=lambda: NOW)


def headers(body: bytes = BODY, secret: str = SECRET, ts: int | str = NOW) -> dict[str, str]:
    """The headers Zoom would send with ``body``, signed at ``NOW`` (this module's clock)."""
    return signed(body, secret, ts)


def refusal(check: WebhookVerifier, sent: Mapping[str, str], body: bytes = BODY) -> str:
    """The reason ``check`` refuses the request (fails the test if it accepts it)."""
    with pytest.raises(WebhookRefused) as refused:
        check.verify(sent, body)
    return refused.value.reason


def test_sign_matches_an_independently_computed_hmac() -> None:
    """``sign`` is v0= plus the hex HMAC-SHA256 of ``v0:{ts}:{body}``, as openssl computes it."""
    assert sign(SECRET, NOW, BODY) == BODY_SIGNATURE
    assert sign(SECRET, str(NOW), BODY) == BODY_SIGNATURE


def test_a_genuine_fresh_request_is_accepted() -> None:
    """A request signed with the secret, within the window, passes and names its secret."""
    check = verifier()
    sent = {"x-zm-signature": BODY_SIGNATURE, "x-zm-request-timestamp": str(NOW)}
    check.verify(sent, BODY)
    assert check.matching_secret(sent, BODY) == SECRET


def test_header_names_are_case_insensitive() -> None:
    """Header names match whatever their case, as in HTTP."""
    sent = {"X-Zm-Signature": BODY_SIGNATURE, "X-ZM-REQUEST-TIMESTAMP": str(NOW)}
    assert verifier().matching_secret(sent, BODY) == SECRET


@pytest.mark.parametrize(
    ("sent", "body", "reason"),
    [
        pytest.param({}, BODY, RefusalReason.SIGNATURE_MISSING, id="unsigned"),
        pytest.param(
            {"x-zm-request-timestamp": str(NOW)},
            BODY,
            RefusalReason.SIGNATURE_MISSING,
            id="no-signature",
        ),
        pytest.param(
            {"x-zm-signature": BODY_SIGNATURE},
            BODY,
            RefusalReason.TIMESTAMP_MISSING,
            id="no-timestamp",
        ),
        pytest.param(headers(secret="guessed"), BODY, RefusalReason.SIGNATURE_INVALID, id="forged"),
        pytest.param(headers(), BODY + b" ", RefusalReason.SIGNATURE_INVALID, id="tampered"),
        pytest.param(
            {**headers(), "x-zm-request-timestamp": str(NOW + 1)},
            BODY,
            RefusalReason.SIGNATURE_INVALID,
            id="timestamp-swapped",
        ),
        pytest.param(
            {**headers(), "x-zm-signature": BODY_SIGNATURE.upper()},
            BODY,
            RefusalReason.SIGNATURE_INVALID,
            id="signature-case-changed",
        ),
        pytest.param(
            {**headers(), "x-zm-signature": "v0=é"},
            BODY,
            RefusalReason.SIGNATURE_INVALID,
            id="non-ascii-signature",
        ),
        pytest.param(headers(ts=NOW - 301), BODY, RefusalReason.TIMESTAMP_STALE, id="stale"),
        pytest.param(headers(ts=NOW + 301), BODY, RefusalReason.TIMESTAMP_FUTURE, id="future"),
        pytest.param(headers(ts="soon"), BODY, RefusalReason.TIMESTAMP_INVALID, id="non-numeric"),
        pytest.param(
            headers(ts="1700000000.5"), BODY, RefusalReason.TIMESTAMP_INVALID, id="fractional"
        ),
        pytest.param(
            headers(ts="-1700000000"), BODY, RefusalReason.TIMESTAMP_INVALID, id="negative"
        ),
        pytest.param(
            headers(ts="\u0661\u0667" + "\u0660" * 8),
            BODY,
            RefusalReason.TIMESTAMP_INVALID,
            id="non-ascii-digits",
        ),
        pytest.param(
            headers(ts="9" * 40), BODY, RefusalReason.TIMESTAMP_INVALID, id="absurdly-long"
        ),
    ],
)
def test_each_refusal_names_its_reason(
    sent: dict[str, str], body: bytes, reason: RefusalReason
) -> None:
    """Every way a request can fail verification is refused, with a reason saying which."""
    assert refusal(verifier(), sent, body) == reason


def test_refusal_is_a_library_error_and_never_shows_the_signature() -> None:
    """WebhookRefused derives from the library's root error; its text holds no signature."""
    forged = headers(secret="guessed")
    with pytest.raises(RTMSLifecycleError) as refused:
        verifier().verify(forged, BODY)
    assert isinstance(refused.value, WebhookRefused)
    text = f"{refused.value} {refused.value!r} {refused.value.reason}"
    assert forged["x-zm-signature"] not in text
    assert forged["x-zm-signature"][3:] not in text
    assert SECRET not in text


@pytest.mark.parametrize(
    ("age", "window", "accepted"),
    [(300, 300, True), (-300, 300, True), (301, 300, False), (-301, 300, False), (31, 30, False)],
)
def test_replay_window_bounds_are_inclusive_and_configurable(
    age: int, window: float, accepted: bool
) -> None:
    """A timestamp exactly ``window`` seconds away passes; one second further is refused."""
    check = verifier(window=window)
    sent = headers(ts=NOW - age)
    if accepted:
        check.verify(sent, BODY)
    else:
        assert refusal(check, sent) in (
            RefusalReason.TIMESTAMP_STALE,
            RefusalReason.TIMESTAMP_FUTURE,
        )


@pytest.mark.parametrize("signer", [SECRET, OTHER])
def test_rotation_accepts_any_configured_secret_and_says_which(signer: str) -> None:
    """With two secrets (two apps, or a rotation) either one's signature is accepted."""
    check = verifier(SECRET, OTHER)
    assert check.matching_secret(headers(secret=signer), BODY) == signer


def test_rotation_still_refuses_a_secret_not_configured() -> None:
    """Configuring several secrets does not weaken the check for any other."""
    assert refusal(verifier(SECRET, OTHER), headers(secret="third")) == "signature_invalid"


def test_duplicate_secrets_answer_with_the_first_configured() -> None:
    """When several configured secrets match, the first in configuration order is named."""
    check = WebhookVerifier(["same", OTHER, "same"], clock=lambda: NOW)
    assert check.matching_secret(headers(secret="same"), BODY) == "same"


def test_signature_covers_the_raw_bytes_not_reserialised_json() -> None:
    """The signature is checked over the bytes received: the same JSON re-serialised fails."""
    raw = b'{ "payload": {"b": 1, "a": "\\u00e9"},\n  "event": "x" }'
    reserialised = json.dumps(json.loads(raw)).encode()
    assert reserialised != raw
    sent = headers(body=raw)
    verifier().verify(sent, raw)
    assert refusal(verifier(), sent, reserialised) == RefusalReason.SIGNATURE_INVALID


@given(body=st.binary(max_size=512), secret=st.text(min_size=1).filter(str.strip))
def test_any_signed_body_verifies_and_any_changed_byte_is_refused(body: bytes, secret: str) -> None:
    """For any body and secret, the signature verifies; one flipped byte makes it fail."""
    check = WebhookVerifier([secret], clock=lambda: NOW)
    sent = headers(body=body, secret=secret)
    check.verify(sent, body)
    if body:
        flipped = bytes([body[0] ^ 1]) + body[1:]
        assert refusal(check, sent, flipped) == RefusalReason.SIGNATURE_INVALID


def test_url_validation_answer_matches_an_independent_hmac() -> None:
    """The challenge answer echoes the token and its HMAC-SHA256 under the secret (openssl)."""
    assert url_validation_response(SECRET, PLAIN_TOKEN) == {
        "plainToken": PLAIN_TOKEN,
        "encryptedToken": ENCRYPTED_TOKEN,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("one", ["one"]),
        ("one,two", ["one", "two"]),
        ("  one , ,two,  ", ["one", "two"]),
        (",,three", ["three"]),
    ],
)
def test_secrets_from_env_splits_strips_and_drops_empties(value: str, expected: list[str]) -> None:
    """The env variable holds comma-separated secrets; whitespace and empty entries go."""
    assert secrets_from_env({SECRET_ENV: value}) == expected


@pytest.mark.parametrize("environ", [{}, {SECRET_ENV: ""}, {SECRET_ENV: " , ,  "}])
def test_secrets_from_env_without_any_secret_says_what_to_set(environ: dict[str, str]) -> None:
    """No usable secret is a configuration error naming the variable to set."""
    with pytest.raises(ConfigurationError, match=SECRET_ENV):
        secrets_from_env(environ)


def test_secrets_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping, the process environment is read."""
    monkeypatch.setenv(SECRET_ENV, "a, b")
    assert secrets_from_env() == ["a", "b"]


@pytest.mark.parametrize(
    ("secrets", "window"),
    [
        ([], 300),
        ([""], 300),
        (["ok", "  "], 300),
        (["ok"], 0),
        (["ok"], -5),
        (["ok"], float("nan")),
    ],
    ids=["none", "empty", "blank", "zero-window", "negative-window", "nan-window"],
)
def test_verifier_refuses_a_configuration_that_cannot_work(
    secrets: list[str], window: float
) -> None:
    """No secret, a blank secret or a window that is not a positive number is a configuration
    error (nan would let every old request through)."""
    with pytest.raises(ConfigurationError):
        WebhookVerifier(secrets, replay_window=window)


def test_verifier_refuses_a_lone_string_and_hides_secrets_in_its_repr() -> None:
    """A bare string is not taken as a list of one-letter secrets; the repr shows no secret."""
    with pytest.raises(TypeError):
        WebhookVerifier(SECRET)
    assert SECRET not in repr(verifier(SECRET, OTHER))


# --- secret labels ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("app1=s1,app2=s2", {"app1": "s1", "app2": "s2"}),
        (" app1 = s1 , s2 ", {"app1": "s1", "#2": "s2"}),
        ("s1,s2", {"#1": "s1", "#2": "s2"}),
        ("old=a==,new=b", {"old": "a==", "new": "b"}),
    ],
    ids=["labelled", "mixed", "unlabelled", "token-with-equals"],
)
def test_secret_entries_may_be_labelled(value: str, expected: dict[str, str]) -> None:
    """ZOOM_WEBHOOK_SECRET_TOKEN entries are label=token or token (labelled #N by place)."""
    assert labelled_secrets_from_env({SECRET_ENV: value}) == expected
    assert secrets_from_env({SECRET_ENV: value}) == list(expected.values())


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("=hidden-token", "label"),
        ("a b=hidden-token", "label"),
        ("app=", "no token"),
        ("app=hidden-token,app=hidden-token2", "repeated"),
    ],
)
def test_bad_secret_entries_are_refused_without_the_secret(value: str, words: str) -> None:
    """A malformed entry is a ConfigurationError naming its place, never the secret."""
    with pytest.raises(ConfigurationError, match=words) as caught:
        labelled_secrets_from_env({SECRET_ENV: value})
    assert "hidden" not in str(caught.value)


def test_verification_names_the_label_and_signing_time() -> None:
    """verify returns the label of the secret that signed the request, and when it was signed."""
    labelled = WebhookVerifier({"app1": OTHER, "app2": SECRET}, clock=lambda: NOW)
    verified = labelled.verify(headers(), BODY)
    assert (verified.label, verified.signed_at, verified.secret) == ("app2", NOW * 1000, SECRET)
    assert SECRET not in repr(verified)
    assert verifier(OTHER, SECRET).verify(headers(), BODY).label == "#2"


def test_stale_refusal_carries_the_age_of_the_genuine_signature() -> None:
    """A genuine request beyond the window is refused as timestamp_stale with its age."""
    with pytest.raises(WebhookRefused) as caught:
        verifier(window=60).verify(headers(ts=NOW - 1500), BODY)
    assert (caught.value.reason, caught.value.age_seconds) == (RefusalReason.TIMESTAMP_STALE, 1500)
