"""The feed side's copy of each instrument's level-2 book, the diffs between its versions and
the checksum API v1 clients verify after every diff (docs/api.md "Order book diffs").

A feed adapter reports the top levels of the book it keeps after every exchange update (a
:class:`streaming.feeds.base.Book`). :meth:`LevelBook.update_to` turns each such report into the
levels that changed (price -> new size, size 0: the level is gone), applies them and returns them;
the checksum is then computed from this book itself, so a client that applied the same diffs to
the same snapshot gets the same number.

The checksum: the top :data:`CHECKSUM_LEVELS` asks (lowest price first), then the top
:data:`CHECKSUM_LEVELS` bids (highest price first); each level written ``<price>:<size>`` with
both numbers in canonical decimal text (:func:`canonical`: no exponent, no trailing zeros after
the point, no trailing point, ``0`` for zero); levels joined by ``,``, the asks' text and the
bids' text joined by ``|``; CRC-32 (the ISO-HDLC polynomial of zlib, PNG and Ethernet) of its
UTF-8 bytes, as an unsigned 32-bit integer.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Iterable
from decimal import Decimal

CHECKSUM_LEVELS = 10  # levels a side the checksum covers

Level = tuple[Decimal, Decimal]  # (price, size)


def canonical(value: Decimal | str) -> str:
    """A price or size as the checksum writes it: ``Decimal("0.5660")`` -> ``"0.566"``,
    ``Decimal("1E+2")`` -> ``"100"`` (the same text ``portfolio.wire.dec`` puts on the wire)."""
    text = format(Decimal(value), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def checksum_text(asks: Iterable[Level], bids: Iterable[Level]) -> str:
    """The text the checksum hashes; ``asks`` lowest first and ``bids`` highest first, each
    already cut to :data:`CHECKSUM_LEVELS`."""
    ask_text = ",".join(f"{canonical(p)}:{canonical(s)}" for p, s in asks)
    bid_text = ",".join(f"{canonical(p)}:{canonical(s)}" for p, s in bids)
    return f"{ask_text}|{bid_text}"


def book_checksum(asks: Iterable[Level], bids: Iterable[Level]) -> int:
    """CRC-32 of :func:`checksum_text`, unsigned."""
    return zlib.crc32(checksum_text(asks, bids).encode()) & 0xFFFFFFFF


class LevelBook:
    """One instrument's levels (price -> size, every size positive) and its change number."""

    def __init__(self, seq: int = 0) -> None:
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.seq = seq  # the number of the last change applied

    def update_to(
        self, bids: Iterable[Level], asks: Iterable[Level]
    ) -> tuple[list[Level], list[Level]]:
        """Make this book equal to the reported levels; returns the changed levels per side
        (bids, asks), each ``(price, new size)`` with size 0 for a level that is gone, and
        counts one change in ``seq`` when anything changed."""
        changes = (_changes(self.bids, bids), _changes(self.asks, asks))
        if changes[0] or changes[1]:
            self.seq += 1
        return changes

    def top(self, levels: int) -> tuple[list[Level], list[Level]]:
        """The best ``levels`` a side: bids highest first, asks lowest first."""
        bids = heapq.nlargest(levels, self.bids.items())
        asks = heapq.nsmallest(levels, self.asks.items())
        return bids, asks

    def checksum(self) -> int:
        bids, asks = self.top(CHECKSUM_LEVELS)
        return book_checksum(asks, bids)


def _changes(side: dict[Decimal, Decimal], reported: Iterable[Level]) -> list[Level]:
    """Set ``side`` to the reported levels; the levels that changed, best-first not promised."""
    new = {price: size for price, size in reported if size > 0}
    changed = [(price, Decimal(0)) for price in side if price not in new]
    changed += [(price, size) for price, size in new.items() if side.get(price) != size]
    side.clear()
    side.update(new)
    return changed
