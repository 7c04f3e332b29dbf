"""Currency exchange as a transaction kind: sell one cash currency, buy another, with a fee;
in the ledger, the database, the form, the CSV format and its export round trip."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.urls import reverse
from hypothesis import given
from hypothesis import strategies as st

from portfolio import ledger, services
from portfolio.importers import transactions_csv
from portfolio.ledger import TxKind
from portfolio.models import (
    AssetClass,
    CashBalance,
    FeedKind,
    Holding,
    Instrument,
    Transaction,
)

D = Decimal
AT = datetime(2026, 3, 2, 9, tzinfo=UTC)


def entry(ref, kind, **fields):
    return ledger.LedgerEntry(ref=ref, kind=kind, executed_at=fields.pop("at", AT), **fields)


# -- the pure ledger ------------------------------------------------------------------------


@pytest.mark.unit
def test_an_exchange_moves_cash_from_one_currency_to_the_other_and_its_fee_is_a_fee():
    """2,000 USD deposited; 1,100 USD sold for 1,000 EUR with a 2 USD fee; 10 shares of a euro
    stock bought at 100 EUR from the euro cash: 898 USD and 0 EUR are left, 2 USD of fees."""
    result = ledger.replay(
        [
            entry(1, "DEPOSIT", currency="USD", amount=D(2000)),
            entry(
                2,
                "EXCHANGE",
                currency="USD",
                amount=D(1100),
                fees=D(2),
                to_currency="EUR",
                to_amount=D(1000),
            ),
            entry(3, "BUY", currency="EUR", instrument="SAP", quantity=D(10), price=D(100)),
        ]
    )
    assert result.cash == {"USD": D(898), "EUR": D(0)}
    assert result.fees == {"USD": D(2)}
    assert result.positions["SAP"].quantity == 10


@pytest.mark.unit
@given(
    sold=st.decimals(min_value=D("0.01"), max_value=D(10**9), places=2),
    bought=st.decimals(min_value=D("0.01"), max_value=D(10**9), places=2),
    fee=st.decimals(min_value=D(0), max_value=D(1000), places=2),
)
def test_exchanging_and_back_costs_exactly_the_two_fees(sold, bought, fee):
    """Property: USD -> EUR, then the same EUR -> USD at the same rate, leaves every currency as
    it was, less the two fees (in USD and EUR)."""
    result = ledger.replay(
        [
            entry(
                1,
                "EXCHANGE",
                currency="USD",
                amount=sold,
                fees=fee,
                to_currency="EUR",
                to_amount=bought,
            ),
            entry(
                2,
                "EXCHANGE",
                currency="EUR",
                amount=bought,
                fees=fee,
                to_currency="USD",
                to_amount=sold,
            ),
        ]
    )
    assert result.cash == {"USD": -fee, "EUR": -fee}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("fields", "field", "problem"),
    [
        ({"to_currency": "EUR", "to_amount": D(0)}, "to_amount", "must be positive"),
        ({"to_amount": D(10)}, "to_currency", "is required for EXCHANGE"),
        ({"to_currency": "USD", "to_amount": D(10)}, "to_currency", "must differ from currency"),
        (
            {"to_currency": "EUR", "to_amount": D(10), "instrument": "SAP"},
            "instrument",
            "must be None",
        ),
        ({"to_currency": "EUR", "to_amount": D(10), "quantity": D(1)}, "quantity", "not used"),
    ],
)
def test_a_malformed_exchange_is_refused_naming_the_field(fields, field, problem):
    with pytest.raises(ledger.LedgerError) as caught:
        entry(7, "EXCHANGE", currency="USD", amount=D(11), **fields)
    assert caught.value.field == field
    assert problem in str(caught.value)


@pytest.mark.unit
def test_to_fields_on_another_kind_are_refused():
    with pytest.raises(ledger.LedgerError) as caught:
        entry(8, "DEPOSIT", currency="USD", amount=D(1), to_currency="EUR")
    assert caught.value.field == "to_currency"


# -- stored, through the services, the form and CSV ------------------------------------------


@pytest.fixture
def sap(db):
    return Instrument.objects.create(
        symbol="SAP",
        name="SAP SE",
        asset_class=AssetClass.EQUITY,
        quote_currency="EUR",
        feed=FeedKind.SIMULATED,
        feed_symbol="SAP",
    )


def cash_of(portfolio):
    return {c.currency: c.amount for c in CashBalance.objects.filter(portfolio=portfolio)}


def fund_a_euro_buy_from_dollars(portfolio, sap):
    services.transaction_add(
        portfolio=portfolio, kind=TxKind.DEPOSIT, amount=D(2000), executed_at=AT
    )
    services.transaction_add(
        portfolio=portfolio,
        kind=TxKind.EXCHANGE,
        amount=D(1100),
        fees=D(2),
        to_amount=D(1000),
        to_currency="eur",
        executed_at=AT.replace(hour=10),
        note="EUR for SAP",
    )
    services.transaction_add(
        portfolio=portfolio,
        kind=TxKind.BUY,
        instrument=sap,
        quantity=D(10),
        price=D(100),
        executed_at=AT.replace(hour=11),
    )


@pytest.mark.django_db
def test_a_foreign_buy_funded_from_base_currency_cash_leaves_no_negative_cash(world, sap):
    portfolio = services.portfolio_create(owner=world["users"]["alice"], name="Euro shares")
    fund_a_euro_buy_from_dollars(portfolio, sap)
    assert cash_of(portfolio) == {"USD": D(898), "EUR": D(0)}
    assert Holding.objects.get(portfolio=portfolio, instrument=sap).quantity == 10
    exchange = Transaction.objects.get(kind=TxKind.EXCHANGE)
    assert (exchange.currency, exchange.to_currency) == ("USD", "EUR")  # defaulted, upper-cased
    # An exchange moves money within the portfolio: no deposit or withdrawal for returns.
    from portfolio.selectors import ledger_reads

    assert [f.amount for f in ledger_reads.external_flows(portfolio=portfolio)] == [D(2000)]


@pytest.mark.django_db
def test_the_database_refuses_an_exchange_into_the_same_currency(world):
    portfolio = world["portfolios"]["alice"]
    with pytest.raises(IntegrityError), transaction.atomic():
        Transaction.objects.create(
            portfolio=portfolio,
            kind=TxKind.EXCHANGE,
            currency="USD",
            amount=D(1),
            to_currency="USD",
            to_amount=D(1),
            executed_at=AT,
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        Transaction.objects.create(
            portfolio=portfolio,
            kind=TxKind.DEPOSIT,
            currency="USD",
            amount=D(1),
            to_amount=D(1),
            executed_at=AT,
        )


@pytest.mark.django_db
def test_an_exchange_that_spends_cash_it_was_never_given_is_still_recorded_like_any_payment(
    world,
):
    """Cash may go negative (not everyone records deposits), for an exchange as for a buy."""
    portfolio = world["portfolios"]["alice"]
    services.transaction_add(
        portfolio=portfolio,
        kind=TxKind.EXCHANGE,
        currency="CHF",
        amount=D(50),
        to_currency="USD",
        to_amount=D(55),
        executed_at=AT,
    )
    assert cash_of(portfolio)["CHF"] == D(-50) and cash_of(portfolio)["USD"] == D(55)


@pytest.mark.django_db
def test_an_exchange_missing_what_it_buys_is_a_form_error_next_to_that_field(world, client):
    alice = world["portfolios"]["alice"]
    client.force_login(world["users"]["alice"])
    response = client.post(
        reverse("transaction-add", args=[alice.id]),
        {"kind": "EXCHANGE", "executed_at": "2026-03-02T09:00", "amount": "100"},
    )
    assert response.status_code == 200
    html = response.content.decode()
    block = html[html.index('data-field-name="to_amount"') :]
    block = block[: block.index("</div>")]
    assert "must be positive for EXCHANGE (what is bought), got 0" in block
    with pytest.raises(ValidationError):
        services.transaction_add(
            portfolio=alice, kind=TxKind.EXCHANGE, amount=D(100), to_amount=D(90), executed_at=AT
        )
    assert not Transaction.objects.filter(kind=TxKind.EXCHANGE).exists()

    response = client.post(
        reverse("transaction-add", args=[alice.id]),
        {
            "kind": "EXCHANGE",
            "executed_at": "2026-03-02T09:00",
            "amount": "100",
            "currency": "usd",
            "fees": "1",
            "to_amount": "92.5",
            "to_currency": "eur",
        },
    )
    assert response.status_code == 302
    assert cash_of(alice)["EUR"] == D("92.5")
    assert cash_of(alice)["USD"] == D(-101)  # alice's deposit was all spent on BTC


@pytest.mark.django_db
def test_export_then_import_gives_the_same_ledger_with_the_exchange(world, sap):
    source = services.portfolio_create(owner=world["users"]["alice"], name="Source")
    fund_a_euro_buy_from_dollars(source, sap)
    exported = transactions_csv.export_csv(portfolio=source)
    header, *rows = exported.splitlines()
    assert header.endswith(",to_amount,to_currency")
    assert rows[1] == "2026-03-02T10:00:00Z,EXCHANGE,,,,2,1100,USD,,EUR for SAP,1000,EUR"

    copy = services.portfolio_create(owner=world["users"]["bob"], name="Copy")
    result = transactions_csv.import_csv(portfolio=copy, text=io.StringIO(exported))
    assert result.ok, result.errors

    def ledger_rows(portfolio):
        return list(
            Transaction.objects.filter(portfolio=portfolio)
            .order_by("executed_at", "id")
            .values_list(
                "kind",
                "instrument",
                "quantity",
                "price",
                "fees",
                "amount",
                "currency",
                "to_amount",
                "to_currency",
                "executed_at",
                "note",
            )
        )

    assert ledger_rows(copy) == ledger_rows(source)
    assert cash_of(copy) == cash_of(source) == {"USD": D(898), "EUR": D(0)}
    assert transactions_csv.export_csv(portfolio=copy) == exported


@pytest.mark.django_db
def test_a_csv_exchange_row_without_the_currency_bought_names_the_column_and_line(world):
    text = (
        "date,type,amount,currency,fee,to_amount,to_currency\n"
        "2026-03-02,Currency exchange,100,USD,1,92,EUR\n"
        "2026-03-03,EXCHANGE,100,USD,,92,\n"
    )
    result = transactions_csv.import_csv(
        portfolio=world["portfolios"]["alice"], text=io.StringIO(text)
    )
    assert [str(e) for e in result.errors] == [
        "line 3: to_currency: is required for EXCHANGE (the currency bought)"
    ]
    assert not Transaction.objects.filter(kind=TxKind.EXCHANGE).exists()
