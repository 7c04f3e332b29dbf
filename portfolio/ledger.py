"""Replay a portfolio's transactions into positions, lots, realized P&L and cash.

Pure ``Decimal`` math with no Django imports: the ORM layer maps its rows to :class:`LedgerEntry`
and calls :func:`replay`. Conventions a caller must know:

- BUY, SELL, TRANSFER_IN and TRANSFER_OUT use ``quantity`` and ``price`` (per unit).
- DIVIDEND, INTEREST, FEE, DEPOSIT and WITHDRAWAL use ``amount`` (gross, in ``currency``).
- SPLIT uses ``ratio``: 2-for-1 is ``Decimal("2")``, a 1-for-10 reverse split ``Decimal("0.1")``.
- EXCHANGE converts cash: ``amount`` of ``currency`` out, ``to_amount`` of ``to_currency`` in
  (the rate is their quotient); its ``fees`` are in ``currency``. Money moves only within the
  portfolio, so it is no deposit or withdrawal for returns.
- ``fees`` may accompany any kind but SPLIT; they always debit cash and count as fees. On a BUY
  they are added to the lot's cost, on a SELL they reduce the proceeds; elsewhere (transfers,
  deposits...) they are an expense only and never touch a cost basis.
- Every instrument has one currency, set by its first trade; its cost basis and realized P&L are
  in that currency. Dividends may be paid in another currency and are kept per currency.
- Base currency: an entry may carry ``fx_rate``, how many units of the portfolio's base currency
  one unit of its ``currency`` bought on the entry's own date (1 when they are the same). Each
  lot then also carries its cost in the base currency at its acquisition's rate, a sale realizes
  its proceeds at the sale's rate against those costs, and income counts at its payment's rate:
  none of them moves when today's rate does (docs/fx.md). A figure that needs an entry without
  a rate is ``None`` in the base currency (unknown), never a guess.
- Quantities and totals are exact. Only sharing one lot's cost or one fee between several
  closings divides; each share is rounded to 20 decimal places and the remainder stays with
  the rest, so realized P&L plus open cost always equals what was paid, to the last digit.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal, DivisionByZero, InvalidOperation, Overflow, localcontext
from typing import NoReturn

__all__ = [
    "ClosedLot",
    "CostBasis",
    "DayState",
    "InstrumentKey",
    "LedgerEntry",
    "LedgerError",
    "LedgerLot",
    "LedgerPosition",
    "LedgerResult",
    "Realization",
    "TxKind",
    "daily_states",
    "replay",
    "states_on",
]

InstrumentKey = str | int

ZERO = Decimal(0)
# 50 digits hold any amount below 10^29 at 20 places, so sums and differences never round.
_CONTEXT = Context(prec=50, traps=[InvalidOperation, DivisionByZero, Overflow])
_SHARE_QUANTUM = Decimal("1e-20")


class TxKind(enum.StrEnum):
    """What a transaction does to positions and cash."""

    BUY = "BUY"
    SELL = "SELL"
    DIVIDEND = "DIVIDEND"
    INTEREST = "INTEREST"
    FEE = "FEE"
    DEPOSIT = "DEPOSIT"
    WITHDRAWAL = "WITHDRAWAL"
    SPLIT = "SPLIT"
    TRANSFER_IN = "TRANSFER_IN"
    TRANSFER_OUT = "TRANSFER_OUT"
    EXCHANGE = "EXCHANGE"


class CostBasis(enum.StrEnum):
    """Which open lots a sale (or transfer out) closes first."""

    FIFO = "FIFO"  # oldest lot first
    LIFO = "LIFO"  # newest lot first
    HIFO = "HIFO"  # highest unit cost first (for short lots: lowest unit proceeds first)
    AVERAGE = "AVERAGE"  # every share costs the pool's average


class LedgerError(ValueError):
    """A transaction that cannot be applied; the message names the transaction and the field."""

    def __init__(self, message: str, *, ref: Hashable = None, field: str | None = None) -> None:
        super().__init__(message)
        self.ref = ref
        self.field = field


_TRADES = frozenset({TxKind.BUY, TxKind.SELL, TxKind.TRANSFER_IN, TxKind.TRANSFER_OUT})
_AMOUNTS = frozenset(
    {TxKind.DIVIDEND, TxKind.INTEREST, TxKind.FEE, TxKind.DEPOSIT, TxKind.WITHDRAWAL}
)
_NEEDS_INSTRUMENT = _TRADES | {TxKind.SPLIT, TxKind.DIVIDEND}
_CASH_ONLY = frozenset({TxKind.DEPOSIT, TxKind.WITHDRAWAL, TxKind.EXCHANGE})


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One transaction as the ledger sees it; validated on construction."""

    ref: Hashable
    kind: TxKind
    executed_at: datetime
    currency: str = ""
    instrument: InstrumentKey | None = None
    quantity: Decimal = ZERO
    price: Decimal = ZERO
    fees: Decimal = ZERO
    amount: Decimal = ZERO
    ratio: Decimal | None = None
    fx_rate: Decimal | None = None
    to_amount: Decimal = ZERO  # EXCHANGE: what it bought, in ``to_currency``
    to_currency: str = ""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", TxKind(self.kind))
        except ValueError:
            self._fail("kind", f"must be one of {', '.join(TxKind)}, got {self.kind!r}")
        if not isinstance(self.executed_at, datetime):
            self._fail("executed_at", f"must be a datetime, got {type(self.executed_at).__name__}")
        if self.executed_at.utcoffset() is None:
            self._fail("executed_at", "must be timezone-aware, got a naive datetime")
        for name in ("quantity", "price", "fees", "amount", "to_amount"):
            self._check_decimal(name, getattr(self, name))
        if self.fx_rate is not None:
            self._check_decimal("fx_rate", self.fx_rate)
            if self.fx_rate == 0:
                self._fail("fx_rate", "must be positive, got 0")
        self._check_kind_fields()
        self._check_instrument()
        if self.kind is not TxKind.SPLIT and (
            not isinstance(self.currency, str) or not self.currency.strip()
        ):
            self._fail("currency", f"is required for {self.kind}")

    def _fail(self, field: str, problem: str) -> NoReturn:
        raise LedgerError(f"transaction {self.ref!r}: {field} {problem}", ref=self.ref, field=field)

    def _check_decimal(self, name: str, value: object) -> None:
        if not isinstance(value, Decimal):
            self._fail(name, f"must be a Decimal, got {type(value).__name__} {value!r}")
        if not value.is_finite():
            self._fail(name, f"must be a finite number, got {value}")
        if value < 0:
            self._fail(name, f"must not be negative, got {value}")

    def _check_kind_fields(self) -> None:
        kind = self.kind
        if kind is TxKind.SPLIT:
            if self.ratio is None:
                self._fail("ratio", "is required for SPLIT (2-for-1 is Decimal('2'))")
            if not isinstance(self.ratio, Decimal) or not self.ratio.is_finite():
                self._fail("ratio", f"must be a finite Decimal, got {self.ratio!r}")
            if self.ratio <= 0:
                self._fail("ratio", f"must be positive, got {self.ratio}")
            unused = ("quantity", "price", "fees", "amount")
        elif self.ratio is not None:
            self._fail("ratio", f"is only used by SPLIT, not {kind}")
        if kind in _TRADES:
            if self.quantity == 0:
                self._fail("quantity", f"must be positive for {kind}, got 0")
            unused = ("amount",)
        elif kind in _AMOUNTS:
            if self.amount == 0:
                self._fail("amount", f"must be positive for {kind}, got 0")
            unused = ("quantity", "price")
        elif kind is TxKind.EXCHANGE:
            if self.amount == 0:
                self._fail("amount", "must be positive for EXCHANGE (what is sold), got 0")
            if self.to_amount == 0:
                self._fail("to_amount", "must be positive for EXCHANGE (what is bought), got 0")
            if not isinstance(self.to_currency, str) or not self.to_currency.strip():
                self._fail("to_currency", "is required for EXCHANGE (the currency bought)")
            if self.to_currency.strip().upper() == str(self.currency).strip().upper():
                self._fail("to_currency", f"must differ from currency, both {self.currency}")
            unused = ("quantity", "price")
        if kind is not TxKind.EXCHANGE:
            if self.to_amount != 0:
                self._fail("to_amount", f"is only used by EXCHANGE, not {kind}")
            if self.to_currency:
                self._fail("to_currency", f"is only used by EXCHANGE, not {kind}")
        for name in unused:
            if getattr(self, name) != 0:
                self._fail(name, f"is not used by {kind}, got {getattr(self, name)}")

    def _check_instrument(self) -> None:
        instrument = self.instrument
        if instrument is not None and (
            isinstance(instrument, bool)
            or not isinstance(instrument, str | int)
            or instrument == ""
        ):
            self._fail("instrument", f"must be a non-empty str or an int, got {instrument!r}")
        if self.kind in _NEEDS_INSTRUMENT and instrument is None:
            self._fail("instrument", f"is required for {self.kind}")
        if self.kind in _CASH_ONLY and instrument is not None:
            self._fail("instrument", f"must be None for {self.kind}, got {instrument!r}")


@dataclass(frozen=True, slots=True)
class LedgerLot:
    """An open lot. Short lots have negative quantity and negative cost (the proceeds received).
    ``cost_base``: the cost in the base currency at the acquisition's rate (None: no rate)."""

    ref: Hashable
    opened_at: datetime
    quantity: Decimal
    cost: Decimal
    cost_base: Decimal | None = None

    @property
    def unit_cost(self) -> Decimal:
        """Cost per unit (proceeds per unit for a short lot)."""
        with localcontext(_CONTEXT):
            return self.cost / self.quantity


@dataclass(frozen=True, slots=True)
class ClosedLot:
    """The part of one lot a sale (or a covering buy) closed: a positive quantity and its cost."""

    ref: Hashable
    opened_at: datetime
    quantity: Decimal
    cost: Decimal
    cost_base: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Realization:
    """P&L realized by one transaction, with the lots it closed.

    Closing a long: ``proceeds`` is the sale's net proceeds, ``cost`` the cost of the lots closed.
    Closing a short: ``proceeds`` is what the short sale brought in, ``cost`` the covering buy.
    """

    ref: Hashable
    instrument: InstrumentKey
    executed_at: datetime
    currency: str
    quantity: Decimal
    proceeds: Decimal
    cost: Decimal
    lots: tuple[ClosedLot, ...]
    closed_short: bool = False
    # In the base currency: proceeds at the closing entry's rate, cost at each lot's own.
    proceeds_base: Decimal | None = None
    cost_base: Decimal | None = None

    @property
    def realized_pnl(self) -> Decimal:
        """Proceeds minus cost."""
        return self.proceeds - self.cost

    @property
    def realized_pnl_base(self) -> Decimal | None:
        """Proceeds minus cost in the base currency, each at its own date's rate."""
        if self.proceeds_base is None or self.cost_base is None:
            return None
        return self.proceeds_base - self.cost_base


@dataclass(frozen=True, slots=True)
class LedgerPosition:
    """What is held of one instrument after replay, and what it earned so far."""

    instrument: InstrumentKey
    currency: str | None
    quantity: Decimal
    cost_basis: Decimal
    lots: tuple[LedgerLot, ...]
    realized_pnl: Decimal
    income: dict[str, Decimal]  # dividends (and coupons) per currency, gross of fees
    # The same in the base currency at each entry's own rate; None where a rate was missing.
    cost_basis_base: Decimal | None = None
    realized_pnl_base: Decimal | None = None
    income_base: Decimal | None = None

    @property
    def average_cost(self) -> Decimal | None:
        """Cost basis per unit held; None when flat."""
        if self.quantity == 0:
            return None
        with localcontext(_CONTEXT):
            return self.cost_basis / self.quantity


@dataclass(frozen=True, slots=True)
class LedgerResult:
    """Everything a replay produces. Mappings are fresh dicts: callers may keep them."""

    method: CostBasis
    positions: dict[InstrumentKey, LedgerPosition]
    cash: dict[str, Decimal]
    fees: dict[str, Decimal]  # every fee paid, FEE transactions included
    income: dict[str, Decimal]  # dividends and interest, gross
    realizations: tuple[Realization, ...]
    # Per currency, dividends and interest in the base currency at each payment's rate.
    income_base: dict[str, Decimal | None] = field(default_factory=dict)

    @property
    def open_positions(self) -> dict[InstrumentKey, LedgerPosition]:
        """Positions with a non-zero quantity."""
        return {key: pos for key, pos in self.positions.items() if pos.quantity != 0}


@dataclass(slots=True)
class _OpenLot:
    seq: int
    ref: Hashable
    opened_at: datetime
    quantity: Decimal
    cost: Decimal
    cost_base: Decimal | None


@dataclass(slots=True)
class _RunningPosition:
    instrument: InstrumentKey
    currency: str | None = None
    lots: list[_OpenLot] = field(default_factory=list)
    realized: Decimal = ZERO
    income: dict[str, Decimal] = field(default_factory=dict)
    realized_base: Decimal | None = ZERO
    income_base: Decimal | None = ZERO

    @property
    def quantity(self) -> Decimal:
        return sum((lot.quantity for lot in self.lots), ZERO)


def _add(totals: dict[str, Decimal], currency: str, amount: Decimal) -> None:
    totals[currency] = totals.get(currency, ZERO) + amount


def _share(total: Decimal, part: Decimal, whole: Decimal) -> Decimal:
    """``total * part / whole`` to 20 places; exactly ``total`` when part is the whole."""
    return total if part == whole else (total * part / whole).quantize(_SHARE_QUANTUM)


def _in_base(amount: Decimal, rate: Decimal | None) -> Decimal | None:
    """``amount`` in the base currency at ``rate``; None (unknown) without a rate."""
    return None if rate is None else amount * rate


def _plus(total: Decimal | None, amount: Decimal | None) -> Decimal | None:
    """A sum that stays unknown once one of its terms is."""
    return None if total is None or amount is None else total + amount


def _sum_known(amounts: Iterable[Decimal | None]) -> Decimal | None:
    total: Decimal | None = ZERO
    for amount in amounts:
        total = _plus(total, amount)
    return total


class _Replayer:
    def __init__(self, *, method: CostBasis, allow_short: bool) -> None:
        self.method = method
        self.allow_short = allow_short
        self.running: dict[InstrumentKey, _RunningPosition] = {}
        self.cash: dict[str, Decimal] = {}
        self.fees: dict[str, Decimal] = {}
        self.income: dict[str, Decimal] = {}
        self.realizations: list[Realization] = []
        self.income_base: dict[str, Decimal | None] = {}
        self.seq = 0

    def running_position(self, entry: LedgerEntry) -> _RunningPosition:
        key = entry.instrument
        assert key is not None  # LedgerEntry validation guarantees it for every caller
        if key not in self.running:
            self.running[key] = _RunningPosition(instrument=key)
        return self.running[key]

    def apply(self, entry: LedgerEntry) -> None:
        if entry.fees:
            _add(self.cash, entry.currency, -entry.fees)
            _add(self.fees, entry.currency, entry.fees)
        kind = entry.kind
        if kind is TxKind.BUY:
            self.buy(entry)
        elif kind is TxKind.SELL:
            self.sell(entry)
        elif kind is TxKind.TRANSFER_IN:
            self.transfer_in(entry)
        elif kind is TxKind.TRANSFER_OUT:
            self.transfer_out(entry)
        elif kind is TxKind.SPLIT:
            for lot in self.running_position(entry).lots:
                lot.quantity *= entry.ratio
        elif kind in (TxKind.DIVIDEND, TxKind.INTEREST):
            _add(self.cash, entry.currency, entry.amount)
            _add(self.income, entry.currency, entry.amount)
            in_base = _in_base(entry.amount, entry.fx_rate)
            self.income_base[entry.currency] = _plus(
                self.income_base.get(entry.currency, ZERO), in_base
            )
            if entry.instrument is not None:
                position = self.running_position(entry)
                _add(position.income, entry.currency, entry.amount)
                position.income_base = _plus(position.income_base, in_base)
        elif kind is TxKind.FEE:
            _add(self.cash, entry.currency, -entry.amount)
            _add(self.fees, entry.currency, entry.amount)
        elif kind is TxKind.DEPOSIT:
            _add(self.cash, entry.currency, entry.amount)
        elif kind is TxKind.WITHDRAWAL:
            _add(self.cash, entry.currency, -entry.amount)
        elif kind is TxKind.EXCHANGE:
            _add(self.cash, entry.currency, -entry.amount)
            _add(self.cash, entry.to_currency, entry.to_amount)

    def check_currency(self, position: _RunningPosition, entry: LedgerEntry) -> None:
        if position.currency is None:
            position.currency = entry.currency
        elif position.currency != entry.currency:
            raise LedgerError(
                f"transaction {entry.ref!r}: currency {entry.currency} differs from "
                f"{position.currency}, the currency {position.instrument!r} was first traded in",
                ref=entry.ref,
                field="currency",
            )

    def open_lot(
        self, position: _RunningPosition, entry: LedgerEntry, quantity: Decimal, cost: Decimal
    ) -> None:
        self.seq += 1
        position.lots.append(
            _OpenLot(
                self.seq,
                entry.ref,
                entry.executed_at,
                quantity,
                cost,
                _in_base(cost, entry.fx_rate),
            )
        )

    def buy(self, entry: LedgerEntry) -> None:
        position = self.running_position(entry)
        self.check_currency(position, entry)
        _add(self.cash, entry.currency, -entry.quantity * entry.price)
        short = -position.quantity if position.quantity < 0 else ZERO
        covered = min(short, entry.quantity)
        fees_left = entry.fees
        if covered:
            closed = self.close(position, covered)
            fees_covering = _share(entry.fees, covered, entry.quantity)
            fees_left -= fees_covering
            cost = covered * entry.price + fees_covering
            proceeds_base = _sum_known(c.cost_base for c in closed)
            self.realize(
                entry,
                position,
                quantity=covered,
                proceeds=-sum((c.cost for c in closed), ZERO),
                cost=cost,
                lots=closed,
                closed_short=True,
                proceeds_base=None if proceeds_base is None else -proceeds_base,
                cost_base=_in_base(cost, entry.fx_rate),
            )
        rest = entry.quantity - covered
        if rest:
            self.open_lot(position, entry, rest, rest * entry.price + fees_left)

    def sell(self, entry: LedgerEntry) -> None:
        position = self.running_position(entry)
        self.check_currency(position, entry)
        _add(self.cash, entry.currency, entry.quantity * entry.price)
        held = position.quantity if position.quantity > 0 else ZERO
        if entry.quantity > held and not self.allow_short:
            self.refuse(entry, position, "sell")
        closing = min(held, entry.quantity)
        fees_left = entry.fees
        if closing:
            closed = self.close(position, closing)
            fees_closing = _share(entry.fees, closing, entry.quantity)
            fees_left -= fees_closing
            proceeds = closing * entry.price - fees_closing
            self.realize(
                entry,
                position,
                quantity=closing,
                proceeds=proceeds,
                cost=sum((c.cost for c in closed), ZERO),
                lots=closed,
                proceeds_base=_in_base(proceeds, entry.fx_rate),
                cost_base=_sum_known(c.cost_base for c in closed),
            )
        rest = entry.quantity - closing
        if rest:
            self.open_lot(position, entry, -rest, -(rest * entry.price - fees_left))

    def transfer_in(self, entry: LedgerEntry) -> None:
        position = self.running_position(entry)
        self.check_currency(position, entry)
        if position.quantity < 0:
            raise LedgerError(
                f"transaction {entry.ref!r}: cannot transfer {entry.quantity} of "
                f"{entry.instrument!r} in while {-position.quantity} are held short; "
                "record a BUY to cover the short",
                ref=entry.ref,
                field="quantity",
            )
        self.open_lot(position, entry, entry.quantity, entry.quantity * entry.price)

    def transfer_out(self, entry: LedgerEntry) -> None:
        position = self.running_position(entry)
        self.check_currency(position, entry)
        held = position.quantity if position.quantity > 0 else ZERO
        # Shorts only come from sales: a transfer can only hand over what is there.
        if entry.quantity > held:
            self.refuse(entry, position, "transfer out")
        self.close(position, entry.quantity)

    def refuse(self, entry: LedgerEntry, position: _RunningPosition, verb: str) -> NoReturn:
        held = position.quantity
        raise LedgerError(
            f"transaction {entry.ref!r}: quantity: cannot {verb} {entry.quantity} of "
            f"{entry.instrument!r} on {entry.executed_at.isoformat()}: held {held}, "
            f"requested {entry.quantity}",
            ref=entry.ref,
            field="quantity",
        )

    def realize(
        self,
        entry: LedgerEntry,
        position: _RunningPosition,
        *,
        lots: list[ClosedLot],
        **fields: object,
    ) -> None:
        realization = Realization(
            ref=entry.ref,
            instrument=position.instrument,
            executed_at=entry.executed_at,
            currency=entry.currency,
            lots=tuple(lots),
            **fields,
        )
        position.realized += realization.realized_pnl
        position.realized_base = _plus(position.realized_base, realization.realized_pnl_base)
        self.realizations.append(realization)

    def close(self, position: _RunningPosition, quantity: Decimal) -> list[ClosedLot]:
        """Take ``quantity`` (positive) off the position's lots, all of one sign, by the method."""
        if self.method is CostBasis.AVERAGE:
            return self.close_average(position, quantity)
        lots = position.lots
        if self.method is CostBasis.FIFO:
            order = sorted(lots, key=lambda lot: lot.seq)
        elif self.method is CostBasis.LIFO:
            order = sorted(lots, key=lambda lot: -lot.seq)
        else:
            sign = 1 if lots[0].quantity > 0 else -1
            # Highest unit cost first closes with the least gain; for shorts that is lowest.
            # Ranked in the base currency at acquisition when every lot has it: that is the
            # gain the portfolio reports.
            in_base = all(lot.cost_base is not None for lot in lots)
            order = sorted(
                lots,
                key=lambda lot: (
                    -sign * (lot.cost_base if in_base else lot.cost) / lot.quantity,
                    lot.seq,
                ),
            )
        closed = []
        remaining = quantity
        for lot in order:
            if remaining == 0:
                break
            size = abs(lot.quantity)
            take = min(remaining, size)
            cost = _share(lot.cost, take, size)
            cost_base = None if lot.cost_base is None else _share(lot.cost_base, take, size)
            closed.append(ClosedLot(lot.ref, lot.opened_at, take, cost, cost_base))
            if take == size:
                lots.remove(lot)
            else:
                lot.quantity -= take if lot.quantity > 0 else -take
                lot.cost -= cost
                if cost_base is not None:
                    lot.cost_base -= cost_base
            remaining -= take
        return closed

    def close_average(self, position: _RunningPosition, quantity: Decimal) -> list[ClosedLot]:
        lots = sorted(position.lots, key=lambda lot: lot.seq)
        pool_quantity = abs(position.quantity)
        pool_cost = sum((lot.cost for lot in lots), ZERO)
        pool_base = _sum_known(lot.cost_base for lot in lots)
        cost_taken = _share(pool_cost, quantity, pool_quantity)
        base_taken = None if pool_base is None else _share(pool_base, quantity, pool_quantity)
        # Quantities leave oldest first (so lot dates stay true); cost leaves at the average.
        takes: list[tuple[_OpenLot, Decimal]] = []
        remaining = quantity
        for lot in lots:
            if remaining == 0:
                break
            take = min(remaining, abs(lot.quantity))
            takes.append((lot, take))
            remaining -= take
        closed = []
        cost_left, base_left = cost_taken, base_taken
        for i, (lot, take) in enumerate(takes):
            last = i == len(takes) - 1
            cost = cost_left if last else _share(cost_taken, take, quantity)
            cost_left -= cost
            cost_base = None
            if base_left is not None:
                cost_base = base_left if last else _share(base_taken, take, quantity)
                base_left -= cost_base
            closed.append(ClosedLot(lot.ref, lot.opened_at, take, cost, cost_base))
            if take == abs(lot.quantity):
                position.lots.remove(lot)
            else:
                lot.quantity -= take if lot.quantity > 0 else -take
        # What stays open is restated at the pool's average unit cost (in both currencies).
        survivors = sorted(position.lots, key=lambda lot: lot.seq)
        quantity_left = abs(sum((lot.quantity for lot in survivors), ZERO))
        pool_left = pool_cost - cost_taken
        pool_base_left = None if pool_base is None else pool_base - base_taken
        cost_rest, base_rest = pool_left, pool_base_left
        for i, lot in enumerate(survivors):
            if i == len(survivors) - 1:
                lot.cost, lot.cost_base = cost_rest, base_rest
            else:
                lot.cost = _share(pool_left, abs(lot.quantity), quantity_left)
                cost_rest -= lot.cost
                if pool_base_left is None:
                    lot.cost_base = None
                else:
                    lot.cost_base = _share(pool_base_left, abs(lot.quantity), quantity_left)
                    base_rest -= lot.cost_base
        return closed

    def result(self) -> LedgerResult:
        positions = {}
        for key, position in self.running.items():
            lots = tuple(
                LedgerLot(lot.ref, lot.opened_at, lot.quantity, lot.cost, lot.cost_base)
                for lot in sorted(position.lots, key=lambda lot: lot.seq)
            )
            positions[key] = LedgerPosition(
                instrument=key,
                currency=position.currency,
                quantity=sum((lot.quantity for lot in lots), ZERO),
                cost_basis=sum((lot.cost for lot in lots), ZERO),
                lots=lots,
                realized_pnl=position.realized,
                income=dict(position.income),
                cost_basis_base=_sum_known(lot.cost_base for lot in lots),
                realized_pnl_base=position.realized_base,
                income_base=position.income_base,
            )
        return LedgerResult(
            method=self.method,
            positions=positions,
            cash=dict(self.cash),
            fees=dict(self.fees),
            income=dict(self.income),
            realizations=tuple(self.realizations),
            income_base=dict(self.income_base),
        )


def replay(
    entries: Iterable[LedgerEntry],
    *,
    method: CostBasis = CostBasis.FIFO,
    allow_short: bool = False,
) -> LedgerResult:
    """Apply ``entries`` in ``executed_at`` order (ties keep input order) and return the state.

    ``method`` picks the lots a SELL or TRANSFER_OUT closes. Selling more than is held raises
    :class:`LedgerError` unless ``allow_short``; then the excess opens short lots, which later
    BUYs close first, realizing P&L. TRANSFER_OUT can never go short, and TRANSFER_IN into a
    short position is refused (a BUY covers it). Cash may go negative: not every user records
    deposits.
    """
    method = CostBasis(method)
    entries = list(entries)
    for i, entry in enumerate(entries):
        if not isinstance(entry, LedgerEntry):
            raise LedgerError(
                f"entry #{i} must be a LedgerEntry, got {type(entry).__name__}", field="entries"
            )
    replayer = _Replayer(method=method, allow_short=allow_short)
    with localcontext(_CONTEXT):
        # sorted() is stable, so same-instant transactions keep the order they were given in.
        for entry in sorted(entries, key=lambda e: e.executed_at):
            replayer.apply(entry)
    return replayer.result()


@dataclass(frozen=True, slots=True)
class DayState:
    """What was held and the cash at the end of one UTC day: every entry of that day applied."""

    day: date
    quantities: dict[InstrumentKey, Decimal]  # non-zero positions only
    currencies: dict[InstrumentKey, str | None]
    cash: dict[str, Decimal]


def daily_states(
    entries: Iterable[LedgerEntry],
    *,
    first: date,
    last: date,
    method: CostBasis = CostBasis.FIFO,
    allow_short: bool = False,
) -> Iterator[DayState]:
    """The state at the end of each UTC day from ``first`` to ``last``: :func:`states_on`
    every day."""
    days = (first + timedelta(days=n) for n in range((last - first).days + 1))
    return states_on(entries, days=days, method=method, allow_short=allow_short)


def states_on(
    entries: Iterable[LedgerEntry],
    *,
    days: Iterable[date],
    method: CostBasis = CostBasis.FIFO,
    allow_short: bool = False,
) -> Iterator[DayState]:
    """The state at the end of each of ``days`` (UTC days, ascending), the same replay as
    :func:`replay` (so the same refusals, up to the last day) applied day by day."""
    method = CostBasis(method)
    ordered = sorted(entries, key=lambda e: e.executed_at)
    replayer = _Replayer(method=method, allow_short=allow_short)
    index = 0
    held: dict[InstrumentKey, Decimal] = {}  # non-zero quantities, kept up to date per entry
    with localcontext(_CONTEXT):
        for day in days:
            while index < len(ordered) and ordered[index].executed_at.astimezone(UTC).date() <= day:
                entry = ordered[index]
                replayer.apply(entry)
                if entry.instrument is not None:  # only its position's quantity can have changed
                    quantity = replayer.running[entry.instrument].quantity
                    if quantity:
                        held[entry.instrument] = quantity
                    else:
                        held.pop(entry.instrument, None)
                index += 1
            currencies = {key: replayer.running[key].currency for key in held}
            yield DayState(day, dict(held), currencies, dict(replayer.cash))
