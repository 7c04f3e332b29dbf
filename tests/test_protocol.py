"""The wire format's helpers that are not covered through a socket."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from portfolio import wire
from streaming import protocol

pytestmark = pytest.mark.unit


def test_now_iso_is_the_current_millisecond_as_iso_makes_it():
    # It reuses its text within a millisecond: across thousands of calls (many milliseconds,
    # many reuses) each stamp must lie between the clock read before and after it, and a
    # repeated stamp must still be the current millisecond's.
    stamps = set()
    for _ in range(20_000):
        before = wire.iso(datetime.now(UTC))
        stamp = protocol.now_iso()
        after = wire.iso(datetime.now(UTC))
        assert before <= stamp <= after
        stamps.add(stamp)
    assert len(stamps) > 1  # it moved on with the clock
    assert stamp.endswith("Z") and len(stamp) == len("2026-11-28T01:13:14.248Z")


# Client frames: RFC 8259 (https://www.rfc-editor.org/rfc/rfc8259).


def frame_error(text: str) -> protocol.FrameError:
    try:
        protocol.parse_client_frame(text)
    except protocol.FrameError as exc:
        return exc
    raise AssertionError(f"{text[:40]!r} was accepted")


def test_rfc_8259_s8_2_unpaired_surrogate_example_is_refused_naming_the_field():
    # Section 8.2: 'the ABNF allows member names and string values to contain bit sequences
    # that cannot encode Unicode characters; for example, "\uDEAD" (a single unpaired UTF-16
    # surrogate)' -- and "the behavior of software that receives [such] JSON texts is
    # unpredictable". Here it is refused, before anything stores or echoes it.
    error = frame_error('{"type": "ping", "id": "\\uDEAD"}')
    assert (error.code, error.message.split(":")[0]) == ("bad_message", "id")
    assert error.frame == {"type": "ping", "id": "\udead"}
    # A key, and a value deep inside, are named too.
    assert frame_error('{"type": "x", "\\uDEAD": 1}').message.startswith("the message: a key")
    nested = frame_error('{"type": "x", "params": {"list": [0, "\\u0000"]}}')
    assert nested.message.startswith("params.list[1]: text must not hold NUL")
    # A paired surrogate (section 7's own example, G clef U+1D11E) is an ordinary character.
    assert protocol.parse_client_frame('{"type": "\\uD834\\uDD1E"}') == {"type": "\U0001d11e"}


def test_rfc_8259_s6_nan_and_infinity_are_not_json():
    # Section 6: "Numeric values that cannot be represented in the grammar below (such as
    # Infinity and NaN) are not permitted."
    for text in ('{"type": "ping", "id": NaN}', '{"type": "x", "max_rate": -Infinity}'):
        error = frame_error(text)
        assert error.code == "invalid_json"
        assert "is not a JSON value" in error.message


def test_rfc_8259_s9_nesting_is_limited_and_the_interpreters_stack_never_decides():
    # Section 9: "An implementation may set limits on the maximum depth of nesting."
    limit = protocol.MAX_NESTING
    within = '{"type": "x", "a": ' + "[" * (limit - 1) + "]" * (limit - 1) + "}"
    assert protocol.parse_client_frame(within)["type"] == "x"
    for depth in (limit + 1, 500, 3000, 20_000):  # below and far past Python's recursion limit
        error = frame_error("[" * depth + "]" * depth)
        assert (error.code, error.message) == (
            "bad_message",
            f"objects and arrays nest at most {limit} deep",
        )


def test_a_frame_that_is_not_an_object_with_a_string_type_is_a_bad_message():
    for text in ("[]", "3", '"ping"', '{"type": 1}', "{}"):
        assert frame_error(text).code == "bad_message"
    assert frame_error("{nope").code == "invalid_json"
