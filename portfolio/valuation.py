"""Value holdings at the latest prices, in the portfolio's base currency.

Pure ``Decimal`` math with no Django imports. Conventions a caller must know:

- Every rate is a fraction: ``Decimal("0.05")`` means 5 %. Pages multiply by 100 to show it.
- ``fx_rates[("EUR", "USD")] = Decimal("1.08")`` means 1 EUR buys 1.08 USD. The inverse pair is
  used when only it is given; there is no triangulation through a third currency.
- Cost in the base currency is ``HoldingInput.cost_base`` when given: each lot at its acquisition's
  rate (the ledger computes it), so it does not move with today's rate and unrealized P&L in the
  base currency includes the currency move since purchase. Without it, cost is converted at
  today's rate.
- Unrealized P&L splits into a price effect (the gain in the instrument's currency, at today's
  rate) and a currency effect (cost at today's rate minus cost at acquisition's): zero in the
  base currency, or when the cost has no acquisition rate.
- Day change is ``quantity * (price - reference_price)`` at today's rate: it ignores the day's
  currency move and trades made today.
- A holding without a price, or whose currency cannot be converted, is reported with
  ``market_value=None`` and a reason, and is left out of every total and allocation.
- Amounts keep full precision; :func:`quantize_money` is for presentation only.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal, DivisionByZero, InvalidOperation, localcontext
from typing import Any

__all__ = [
    "AllocationSlice",
    "CashValue",
    "HoldingInput",
    "HoldingValue",
    "PortfolioValue",
    "ValuationError",
    "ValueStatus",
    "fx_rate",
    "quantize_money",
    "value_portfolio",
]

ZERO = Decimal(0)
_CONTEXT = Context(prec=50, traps=[InvalidOperation, DivisionByZero])
CASH_ASSET_CLASS = "cash"

# ISO 4217 minor units where they are not 2; crypto is shown to 8 places (a satoshi).
_MINOR_UNITS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    "BTC": 8, "ETH": 8,
}  # fmt: skip


class ValuationError(ValueError):
    """Input that cannot be valued at all (not a missing price: that is only flagged)."""


class ValueStatus(enum.StrEnum):
    """Whether a holding made it into the totals, and if not, why."""

    OK = "ok"
    UNPRICED = "unpriced"
    NO_FX = "no_fx"


_OK = ValueStatus.OK
_ONE = Decimal(1)  # the rate from a currency to itself (shared: _value_holding tests for it)


# Records of one valuation: built per holding per valuation (a worker builds tens of thousands a
# second), so not frozen — a frozen dataclass sets each field through object.__setattr__, at a
# multiple of the cost. Only _totals sets a holding's weight, once the total is known; treat them
# as read-only.
@dataclass(slots=True)
class HoldingInput:
    """A position to value: quantity and total cost basis in the instrument's currency."""

    instrument: Hashable
    quantity: Decimal
    cost_basis: Decimal
    currency: str
    asset_class: str = "other"
    cost_base: Decimal | None = None  # in the base currency at acquisition's rates


@dataclass(slots=True)
class HoldingValue:
    """One holding valued in the base currency; ``None`` wherever it could not be computed."""

    instrument: Hashable
    asset_class: str
    currency: str
    quantity: Decimal
    price: Decimal | None
    reference_price: Decimal | None
    fx_rate: Decimal | None
    market_value: Decimal | None
    cost: Decimal | None
    unrealized_pnl: Decimal | None
    unrealized_return: Decimal | None
    day_change: Decimal | None
    day_return: Decimal | None
    weight: Decimal | None
    status: ValueStatus
    reason: str | None = None
    # unrealized_pnl = price_effect + currency_effect: the gain in the instrument's own currency
    # at today's rate, and what the currency's move since acquisition did to the money invested.
    price_effect: Decimal | None = None
    currency_effect: Decimal | None = None


@dataclass(slots=True)
class CashValue:
    """A cash balance converted to the base currency."""

    currency: str
    amount: Decimal
    fx_rate: Decimal | None
    market_value: Decimal | None
    weight: Decimal | None
    status: ValueStatus
    reason: str | None = None


@dataclass(slots=True)
class AllocationSlice:
    """A share of the portfolio's value: ``weight`` is ``value`` over the portfolio total."""

    key: Hashable
    value: Decimal
    weight: Decimal | None


@dataclass(frozen=True, slots=True)
class PortfolioValue:
    """Holdings, cash and totals of one portfolio in ``base_currency``.

    ``market_value`` is holdings plus cash; ``cost`` and the P&L figures cover priced holdings.
    ``by_instrument`` has holdings only, ``by_asset_class`` and ``by_currency`` include cash,
    so each of the three adds up to ``market_value`` together with the cash it leaves out.
    """

    base_currency: str
    holdings: tuple[HoldingValue, ...]
    cash: tuple[CashValue, ...]
    market_value: Decimal
    holdings_value: Decimal
    cash_value: Decimal
    cost: Decimal
    unrealized_pnl: Decimal
    unrealized_return: Decimal | None
    day_change: Decimal
    day_return: Decimal | None
    by_asset_class: dict[str, AllocationSlice]
    by_currency: dict[str, AllocationSlice]
    issues: tuple[str, ...]

    @property
    def by_instrument(self) -> dict[Hashable, AllocationSlice]:
        """Priced holdings by instrument, largest first (on demand: live pages don't show it)."""
        priced = ((h.instrument, h.market_value) for h in self.holdings if h.status is _OK)
        return _slices(priced, self.market_value)

    @property
    def complete(self) -> bool:
        """True when every holding and cash balance made it into the totals."""
        return not self.issues


def quantize_money(amount: Decimal, currency: str) -> Decimal:
    """Round ``amount`` for display in ``currency``: never call this before doing math.

    Decision: ISO 4217 minor units (2 for most fiat, 0 for JPY/KRW, 3 for KWD/BHD...), 8 for
    BTC and ETH, 2 for anything unknown; half-up, as a person rounding by hand would.
    """
    places = _MINOR_UNITS.get(currency.upper(), 2)
    return amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def fx_rate(source: str, target: str, rates: Mapping[tuple[str, str], Decimal]) -> Decimal | None:
    """How many ``target`` one ``source`` buys, from ``rates`` or their inverse; None if unknown."""
    return _fx_rate(source, target, rates)


def _fx_rate(source: str, target: str, rates: Mapping[tuple[str, str], Decimal]) -> Decimal | None:
    if source == target:
        return _ONE
    if (source, target) in rates:
        return rates[(source, target)]
    if (target, source) in rates:
        return 1 / rates[(target, source)]
    return None


def price_return(price: Decimal, reference: Decimal) -> Decimal | None:
    """A price's change since ``reference`` as a fraction: a holding's ``day_return``."""
    with localcontext(_CONTEXT):
        return _ratio(price - reference, reference)


def _ratio(part: Decimal, whole: Decimal) -> Decimal | None:
    return None if whole == 0 else part / whole


def _check(value: object, what: str, *, positive: bool = False) -> None:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValuationError(f"{what} must be a finite Decimal, got {value!r}")
    if positive and value <= 0:
        raise ValuationError(f"{what} must be positive, got {value}")


def _value_holding(
    holding: HoldingInput,
    price: Decimal | None,
    reference: Decimal | None,
    rate: Decimal | None,
    base_currency: str,
) -> HoldingValue:
    """A :class:`HoldingValue` without its ``weight`` (it needs the total: :func:`_totals` sets
    it). This runs per holding per valuation: one record built once, positionally."""
    if price is None or rate is None:
        reason = (
            f"no price for {holding.instrument!r}"
            if price is None
            else f"no {holding.currency}->{base_currency} rate for {holding.instrument!r}"
        )
        status = ValueStatus.UNPRICED if price is None else ValueStatus.NO_FX
        return HoldingValue(
            holding.instrument, holding.asset_class, holding.currency, holding.quantity, price,
            reference, rate, None, None, None, None, None, None, None, status, reason,
        )  # fmt: skip
    quantity = holding.quantity
    # In the base currency (the common case) the rate is _ONE: multiplying by it changes
    # neither digits nor exponent, so it is left out.
    same = rate is _ONE
    value = quantity * price if same else quantity * price * rate
    cost_base = holding.cost_base
    if same:
        cost = holding.cost_basis
        pnl = value - cost
        price_effect, currency_effect = pnl, ZERO
    else:
        cost_today = holding.cost_basis * rate
        cost = cost_today if cost_base is None else cost_base
        pnl = value - cost
        price_effect, currency_effect = value - cost_today, cost_today - cost
    day_change = day_return = None
    if reference is not None:
        move = price - reference
        day_change = quantity * move if same else quantity * move * rate
        # _ratio written out here and below (a call each, per holding per valuation)
        day_return = None if reference == 0 else move / reference  # = price_return()
    pnl_return = None if cost == 0 else pnl / abs(cost)
    return HoldingValue(
        holding.instrument, holding.asset_class, holding.currency, quantity, price, reference,
        rate, value, cost, pnl, pnl_return, day_change, day_return, None, _OK, None,
        price_effect, currency_effect,
    )  # fmt: skip


def value_portfolio(
    *,
    holdings: Iterable[HoldingInput],
    prices: Mapping[Hashable, Decimal | None],
    reference_prices: Mapping[Hashable, Decimal | None] | None = None,
    fx_rates: Mapping[tuple[str, str], Decimal] | None = None,
    base_currency: str,
    cash: Mapping[str, Decimal] | None = None,
) -> PortfolioValue:
    """Value ``holdings`` (and ``cash`` balances per currency) in ``base_currency``.

    ``prices`` holds the latest price per instrument in its own currency (missing or None:
    unpriced); ``reference_prices`` the previous close or 24 h-ago price for day change.
    Unpriced or unconvertible items are flagged in ``issues`` and left out of the totals.
    """
    reference_prices = reference_prices or {}
    fx_rates = fx_rates or {}
    cash = cash or {}
    for pair, rate in fx_rates.items():
        _check(rate, f"fx rate {pair[0]}->{pair[1]}", positive=True)
    with localcontext(_CONTEXT):
        valued = []
        rates: dict[str, Decimal | None] = {}  # per holding currency, for this call
        for holding in holdings:
            if not isinstance(holding, HoldingInput):
                raise ValuationError(f"holdings must be HoldingInput, got {type(holding).__name__}")
            # Inline checks, messages built only on failure: this loop runs per holding per
            # valuation, a worker's hottest code.
            instrument = holding.instrument
            price = prices.get(instrument)
            reference = reference_prices.get(instrument)
            quantity, cost_basis = holding.quantity, holding.cost_basis
            if not (isinstance(quantity, Decimal) and quantity.is_finite()):
                _check(quantity, f"quantity of {instrument!r}")
            if not (isinstance(cost_basis, Decimal) and cost_basis.is_finite()):
                _check(cost_basis, f"cost_basis of {instrument!r}")
            cost_base = holding.cost_base
            if cost_base is not None and not (
                isinstance(cost_base, Decimal) and cost_base.is_finite()
            ):
                _check(cost_base, f"cost_base of {instrument!r}")
            if price is not None and not (isinstance(price, Decimal) and price.is_finite()):
                _check(price, f"price of {instrument!r}")
            if reference is not None and not (
                isinstance(reference, Decimal) and reference.is_finite()
            ):
                _check(reference, f"reference price of {instrument!r}")
            currency = holding.currency
            rate = (
                rates[currency]
                if currency in rates
                else rates.setdefault(currency, _fx_rate(currency, base_currency, fx_rates))
            )
            valued.append(_value_holding(holding, price, reference, rate, base_currency))
        cash_values = []
        for currency, amount in cash.items():
            _check(amount, f"cash balance in {currency}")
            rate = _fx_rate(currency, base_currency, fx_rates)
            cash_values.append(
                {
                    "currency": currency,
                    "amount": amount,
                    "fx_rate": rate,
                    "market_value": None if rate is None else amount * rate,
                    "status": ValueStatus.OK if rate is not None else ValueStatus.NO_FX,
                    "reason": None if rate is not None else f"no {currency}->{base_currency} rate",
                }
            )
        return _totals(valued, cash_values, base_currency=base_currency)


def _slices(
    pairs: Iterable[tuple[Hashable, Decimal]], total: Decimal
) -> dict[Hashable, AllocationSlice]:
    sums: dict[Hashable, Decimal] = {}
    for key, value in pairs:
        sums[key] = sums.get(key, ZERO) + value
    ordered = sorted(sums.items(), key=lambda item: item[1], reverse=True)
    return {key: AllocationSlice(key, value, _ratio(value, total)) for key, value in ordered}


def _totals(valued: list[HoldingValue], cash_values: list[dict[str, Any]], *, base_currency: str):
    """Totals, then each holding's and cash balance's weight in them."""
    priced = [h for h in valued if h.status is _OK]
    counted_cash = [c for c in cash_values if c["status"] is _OK]
    holdings_value = sum([h.market_value for h in priced], ZERO)
    cash_value = sum([c["market_value"] for c in counted_cash], ZERO)
    total = holdings_value + cash_value
    cost = sum([h.cost for h in priced], ZERO)
    pnl = holdings_value - cost
    day_change = sum([h.day_change for h in priced if h.day_change is not None], ZERO)
    if total != 0:
        for h in priced:
            h.weight = h.market_value / total
    cash_out = tuple(
        CashValue(**c, weight=_ratio(c["market_value"], total) if c["status"] is _OK else None)
        for c in cash_values
    )
    issues = tuple(item.reason for item in (*valued, *cash_out) if item.reason)
    cash_pairs = [(CASH_ASSET_CLASS, c["market_value"]) for c in counted_cash]
    return PortfolioValue(
        base_currency=base_currency,
        holdings=tuple(valued),
        cash=cash_out,
        market_value=total,
        holdings_value=holdings_value,
        cash_value=cash_value,
        cost=cost,
        unrealized_pnl=pnl,
        unrealized_return=_ratio(pnl, abs(cost)),
        day_change=day_change,
        # Relative to yesterday's value of what is counted today: today's total minus the change.
        day_return=_ratio(day_change, total - day_change),
        by_asset_class=_slices(
            [*((h.asset_class, h.market_value) for h in priced), *cash_pairs], total
        ),
        by_currency=_slices(
            [
                *((h.currency, h.market_value) for h in priced),
                *((c["currency"], c["market_value"]) for c in counted_cash),
            ],
            total,
        ),
        issues=issues,
    )
