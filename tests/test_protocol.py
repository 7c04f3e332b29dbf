"""The wire format's helpers that are not covered through a socket."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streaming import protocol

pytestmark = pytest.mark.unit


def test_now_iso_is_the_current_millisecond_as_iso_makes_it():
    # It reuses its text within a millisecond: across thousands of calls (many milliseconds,
    # many reuses) each stamp must lie between the clock read before and after it, and a
    # repeated stamp must still be the current millisecond's.
    stamps = set()
    for _ in range(20_000):
        before = protocol.iso(datetime.now(UTC))
        stamp = protocol.now_iso()
        after = protocol.iso(datetime.now(UTC))
        assert before <= stamp <= after
        stamps.add(stamp)
    assert len(stamps) > 1  # it moved on with the clock
    assert stamp.endswith("Z") and len(stamp) == len("2026-11-28T01:13:14.248Z")
