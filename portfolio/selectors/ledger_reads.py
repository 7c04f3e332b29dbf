"""The ledger as the domain reads it: transactions as ledger entries, external flows and
realizations."""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal

from portfolio import ledger, performance, valuation
from portfolio.ledger import TxKind
from portfolio.models import (
    Portfolio,
    Transaction,
)
from portfolio.price_history import FxHistory
from portfolio.selectors.live_states import fx_rates


def external_flows(*, portfolio: Portfolio) -> list[performance.CashFlow]:
    """Deposits (+) and withdrawals (-) in the base currency, each at its date's FX rate."""
    flows = external_flows_of(portfolios={portfolio.id: portfolio.base_currency}, rates=fx_rates())
    return flows[portfolio.id]


def external_flows_of(
    *, portfolios: dict[int, str], rates: dict[tuple[str, str], Decimal]
) -> dict[int, list[performance.CashFlow]]:
    """:func:`external_flows` of each portfolio (id -> base currency), oldest first, in one
    query. A foreign flow is converted at its UTC date's rate from the FX price history (the
    last close carried over gaps), at today's (``rates``) where there is no history; a flow in
    a currency with no rate to the base currency at all is left out."""
    flows: dict[int, list[performance.CashFlow]] = {pid: [] for pid in portfolios}
    rows = list(
        Transaction.objects.filter(
            portfolio_id__in=list(portfolios), kind__in=[TxKind.DEPOSIT, TxKind.WITHDRAWAL]
        )
        .order_by("portfolio_id", "executed_at", "id")
        .values_list("portfolio_id", "kind", "currency", "amount", "executed_at")
    )
    foreign: dict[str, set[str]] = {}  # base currency -> currencies flowing in or out
    for pid, _, currency, _, _ in rows:
        if currency != portfolios[pid]:
            foreign.setdefault(portfolios[pid], set()).add(currency)
    histories = {
        base: FxHistory(base_currency=base, currencies=currencies)
        for base, currencies in foreign.items()
    }
    for pid, kind, currency, amount, at in rows:
        base = portfolios[pid]
        rate = None
        if currency != base:
            dated = histories[base].rate_on(currency, at.astimezone(UTC).date())
            rate = dated.rate if dated is not None else None
        if rate is None:
            rate = valuation.fx_rate(currency, base, rates)
        if rate is None:
            continue
        sign = 1 if kind == TxKind.DEPOSIT else -1
        flows[pid].append(performance.CashFlow(at=at, amount=sign * amount * rate))
    return flows


def realizations(*, portfolio: Portfolio) -> dict[int, ledger.Realization]:
    """What each sale (or covering buy) realized, with the lots it closed, by transaction id:
    the ledger replayed with the portfolio's cost-basis method."""

    result = ledger.replay(
        ledger_entries(portfolio),
        method=ledger.CostBasis(portfolio.cost_basis_method),
        allow_short=portfolio.allow_short,
    )
    return {r.ref: r for r in result.realizations}


def _as_entered(value: Decimal) -> Decimal:
    """Drop the column's padding zeros (3.000000000000 -> 3) so messages read like the input."""
    if value == value.to_integral_value():
        return value.quantize(Decimal(1))
    return value.normalize()


def ledger_entry(tx: Transaction, fx_rate: Decimal | None = None) -> ledger.LedgerEntry:
    """The ledger's view of a stored (or about to be stored) transaction; ``fx_rate``: base
    currency per unit of its currency on its date (see ``ledger``)."""
    return ledger.LedgerEntry(
        ref=tx.pk,
        kind=ledger.TxKind(tx.kind),
        executed_at=tx.executed_at,
        currency=tx.currency,
        # Keyed by symbol so the ledger's messages name what the user knows.
        instrument=tx.instrument.symbol if tx.instrument_id else None,
        quantity=_as_entered(tx.quantity),
        price=_as_entered(tx.price),
        fees=_as_entered(tx.fees),
        amount=_as_entered(tx.amount),
        ratio=None if tx.ratio is None else _as_entered(tx.ratio),
        fx_rate=fx_rate,
        to_amount=_as_entered(tx.to_amount),
        to_currency=tx.to_currency,
    )


def ledger_entries(portfolio: Portfolio) -> list[ledger.LedgerEntry]:
    """The portfolio's transactions as the ledger sees them (as :func:`ledger_entry` makes
    them), in the order it replays them; read as rows, not model instances (a long ledger
    is read whenever its past is valued)."""
    rows = (
        Transaction.objects.filter(portfolio=portfolio)
        .order_by("executed_at", "id")
        .values_list(
            "pk", "kind", "executed_at", "currency", "instrument__symbol", "quantity", "price",
            "fees", "amount", "ratio", "to_amount", "to_currency",
        )
    )  # fmt: skip
    return [
        ledger.LedgerEntry(
            ref=pk,
            kind=ledger.TxKind(kind),
            executed_at=executed_at,
            currency=currency,
            instrument=symbol,
            quantity=_as_entered(quantity),
            price=_as_entered(price),
            fees=_as_entered(fees),
            amount=_as_entered(amount),
            ratio=None if ratio is None else _as_entered(ratio),
            to_amount=_as_entered(to_amount),
            to_currency=to_currency,
        )
        for (
            pk, kind, executed_at, currency, symbol, quantity, price, fees, amount, ratio,
            to_amount, to_currency,
        ) in rows
    ]  # fmt: skip
