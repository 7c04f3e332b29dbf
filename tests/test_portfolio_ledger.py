"""The ledger in the database: transactions are the truth, holdings and cash are recomputed from
them in the same DB transaction, and refusals name the field."""

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from portfolio import services
from portfolio.ledger import CostBasis, TxKind
from portfolio.models import (
    AssetClass,
    CashBalance,
    FeedKind,
    Holding,
    Instrument,
    Lot,
    Transaction,
)
from portfolio.selectors import live_states
from streaming.tasks import ingest_quotes
from tests.conftest import ROOT
from tests.test_ingest import deliveries
from tests.websocket import as_sent

T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


def holding(portfolio, instrument):
    return Holding.objects.get(portfolio=portfolio, instrument=instrument)


def cash(portfolio, currency="USD"):
    return CashBalance.objects.get(portfolio=portfolio, currency=currency).amount


def buy(portfolio, instrument, quantity, price, at, fees="0"):
    return services.transaction_add(
        portfolio=portfolio,
        kind=TxKind.BUY,
        instrument=instrument,
        quantity=Decimal(quantity),
        price=Decimal(price),
        fees=Decimal(fees),
        executed_at=at,
    )


def sell(portfolio, instrument, quantity, price, at):
    return services.transaction_add(
        portfolio=portfolio,
        kind=TxKind.SELL,
        instrument=instrument,
        quantity=Decimal(quantity),
        price=Decimal(price),
        executed_at=at,
    )


def test_world_holdings_are_derived_from_deposit_and_buy(world):
    alice = world["portfolios"]["alice"]
    btc = holding(alice, world["btc"])
    assert (btc.quantity, btc.cost_basis, btc.currency) == (2, 1000, "USD")
    assert cash(alice) == 0
    assert Lot.objects.get(holding=btc).quantity == 2


def test_a_new_buy_is_visible_in_holdings_inside_its_db_transaction_and_gone_on_rollback(world):
    alice = world["portfolios"]["alice"]

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        buy(alice, world["btc"], "1", "600", T0, fees="2")
        # Same DB transaction: the recomputed holding and cash are already there.
        assert holding(alice, world["btc"]).quantity == 3
        assert holding(alice, world["btc"]).cost_basis == 1602
        assert cash(alice) == -602
        raise Abort
    assert holding(alice, world["btc"]).quantity == 2
    assert cash(alice) == 0


def test_editing_and_deleting_a_transaction_recompute_holding_and_cash(world):
    alice = world["portfolios"]["alice"]
    tx = buy(alice, world["btc"], "1", "600", T0)
    services.transaction_update(tx=tx, quantity=Decimal("0.5"))
    assert holding(alice, world["btc"]).quantity == Decimal("2.5")
    assert cash(alice) == -300
    services.transaction_delete(tx=tx)
    assert holding(alice, world["btc"]).quantity == 2
    assert cash(alice) == 0
    assert not Transaction.objects.filter(pk=tx.pk).exists()


def test_selling_more_than_held_is_refused_on_the_quantity_field_and_nothing_is_stored(world):
    alice = world["portfolios"]["alice"]
    before = Transaction.objects.count()
    with pytest.raises(ValidationError) as refused:
        sell(alice, world["btc"], "3", "700", T0)
    message = refused.value.message_dict["quantity"][0]
    assert "cannot sell 3 of 'BTC-USD'" in message
    assert "held 2, requested 3" in message
    assert Transaction.objects.count() == before
    assert holding(alice, world["btc"]).quantity == 2


def test_short_selling_is_allowed_when_the_portfolio_allows_it(world):
    alice = world["portfolios"]["alice"]
    services.portfolio_update(portfolio=alice, allow_short=True)
    sell(alice, world["btc"], "3", "700", T0)
    btc = holding(alice, world["btc"])
    assert btc.quantity == -1
    assert btc.cost_basis == -700  # the short lot holds its proceeds
    assert btc.realized_pnl == 2 * 700 - 1000
    with pytest.raises(ValidationError) as refused:
        services.portfolio_update(portfolio=alice, allow_short=False)
    assert "allow_short" in refused.value.message_dict


def test_deleting_a_buy_that_a_later_sale_needs_is_refused(world):
    alice = world["portfolios"]["alice"]
    extra = buy(alice, world["btc"], "1", "600", T0)
    sell(alice, world["btc"], "3", "700", T0 + timedelta(days=1))
    with pytest.raises(ValidationError) as refused:
        services.transaction_delete(tx=extra)
    assert "cannot sell 3 of 'BTC-USD'" in refused.value.messages[0]
    assert Transaction.objects.filter(pk=extra.pk).exists()
    assert holding(alice, world["btc"]).quantity == 0


@pytest.mark.parametrize(
    ("method", "realized", "cost_left"),
    [
        # Lots: 2 @ 500 (world), 1 @ 800, 1 @ 650 (2450 in all); then 1 is sold at 900.
        (CostBasis.FIFO, "400", "1950"),  # closes a 500 lot
        (CostBasis.LIFO, "250", "1800"),  # closes the 650 lot
        (CostBasis.HIFO, "100", "1650"),  # closes the 800 lot
        (CostBasis.AVERAGE, "287.5", "1837.5"),  # (1000 + 800 + 650) / 4 = 612.5
    ],
)
def test_changing_the_cost_basis_method_recomputes_realized_pnl_and_cost(
    world, method, realized, cost_left
):
    alice = world["portfolios"]["alice"]
    buy(alice, world["btc"], "1", "800", T0)
    buy(alice, world["btc"], "1", "650", T0 + timedelta(days=1))
    sell(alice, world["btc"], "1", "900", T0 + timedelta(days=2))
    services.portfolio_update(portfolio=alice, cost_basis_method=method)
    btc = holding(alice, world["btc"])
    assert btc.realized_pnl == Decimal(realized)
    assert btc.cost_basis == Decimal(cost_left)
    assert btc.quantity == 3


def test_field_rules_are_reported_on_the_field_and_the_database_enforces_them_too(world):
    alice = world["portfolios"]["alice"]
    with pytest.raises(ValidationError) as refused:
        services.transaction_add(
            portfolio=alice, kind=TxKind.BUY, instrument=world["btc"], executed_at=T0
        )
    assert "must be positive for BUY" in refused.value.message_dict["quantity"][0]
    with pytest.raises(ValidationError) as refused:
        services.transaction_add(
            portfolio=alice, kind=TxKind.DEPOSIT, amount=Decimal("5"), executed_at=T0,
            instrument=world["btc"],
        )  # fmt: skip
    assert "instrument" in refused.value.message_dict
    with pytest.raises(IntegrityError), transaction.atomic():
        Transaction.objects.create(
            portfolio=alice, kind=TxKind.SELL, instrument=world["btc"], executed_at=T0
        )


def test_adding_a_transaction_publishes_the_new_valuation_after_commit(
    world, redis_client, django_capture_on_commit_callbacks
):
    def add_a_buy():
        with django_capture_on_commit_callbacks(execute=True):
            buy(world["portfolios"]["alice"], world["btc"], "1", "600", T0)

    received = deliveries({"alice": world["users"]["alice"]}, add_a_buy)["alice"]
    assert [as_sent(m)["type"] for m in received] == ["valuation"]
    message = as_sent(received[0])
    assert message["portfolio"]["holdings"][0]["quantity"] == "3"
    assert message["portfolio"]["cash_total"] == "-600.00"


def fx_world(world):
    eurusd = Instrument.objects.create(
        symbol="EURUSD",
        name="Euro in US dollars",
        asset_class=AssetClass.FX,
        quote_currency="USD",
        feed=FeedKind.SIMULATED,
        feed_symbol="EURUSD",
    )
    sap = Instrument.objects.create(
        symbol="SAP",
        name="SAP SE",
        asset_class=AssetClass.EQUITY,
        quote_currency="EUR",
        feed=FeedKind.SIMULATED,
        feed_symbol="SAP",
    )
    return eurusd, sap


def tick(instrument, price, ts):
    return {
        "instrument": instrument.id,
        "price": price,
        "ts": ts.isoformat(),
        "source": "simulated",
    }


def test_a_euro_holding_is_valued_in_dollars_through_the_live_fx_quote(
    world, redis_client, django_capture_on_commit_callbacks
):
    eurusd, sap = fx_world(world)
    alice = world["portfolios"]["alice"]
    buy(alice, sap, "10", "100", T0)  # 1000 EUR of cost, paid from EUR cash
    ingest_quotes([tick(world["btc"], "500", T0), tick(sap, "120", T0)])
    state = live_states.portfolio_states(portfolio_ids=[alice.id])[0]
    row = next(h for h in state["holdings"] if h["symbol"] == "SAP")
    assert row["status"] == "no_fx" and row["value_base"] is None
    assert state["total"] == "1000.00"  # BTC only; SAP and EUR cash have no rate yet
    assert len(state["issues"]) == 2

    def fx_tick():
        with django_capture_on_commit_callbacks(execute=True):
            ingest_quotes([tick(eurusd, "1.10", T0 + timedelta(seconds=1))])

    # The FX tick alone revalues alice (she holds EUR); bob and charlie hold no EUR.
    got = deliveries(world["users"], fx_tick)
    assert got["bob"] == [] and got["charlie"] == []
    [message] = got["alice"]
    state = as_sent(message)["portfolio"]
    row = next(h for h in state["holdings"] if h["symbol"] == "SAP")
    assert row["value"] == "1200.00"  # in EUR
    assert row["value_base"] == "1320.00"  # 10 x 120 x 1.10
    assert row["unrealized_pnl"] == "220.00"  # (1200 - 1000) x 1.10
    # USD cash is exactly 0 and not listed; EUR cash went negative buying SAP.
    assert state["cash"] == [
        {"currency": "EUR", "amount": "-1000.00", "value_base": "-1100.00", "weight_pct": "-90.16"}
    ]
    assert state["total"] == "1220.00"  # 1000 BTC + 1320 SAP - 1100 EUR cash
    assert {s["key"]: s["value"] for s in state["allocation"]["currency"]} == {
        "USD": "1000.00",
        "EUR": "220.00",
    }
    assert state["complete"] is True


def store(instrument, price, ts):
    return services.quotes_store(
        updates=[
            services.QuoteUpdate(
                instrument_id=instrument.id,
                price=Decimal(price),
                exchange_ts=ts,
                source="simulated",
            )
        ]
    )


def test_the_previous_utc_days_last_price_becomes_the_reference_for_day_change(world):
    btc, alice = world["btc"], world["portfolios"]["alice"]
    day1 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    store(btc, "100", day1)
    store(btc, "105", day1.replace(hour=23, minute=59, second=59))
    quote = btc.quote.__class__.objects.get(instrument=btc)
    assert quote.reference_price is None  # no earlier day seen yet
    day2_first = datetime(2026, 11, 27, 0, 0, 1, tzinfo=UTC)
    batch_day2 = [
        services.QuoteUpdate(
            instrument_id=btc.id, price=Decimal("110"), exchange_ts=day2_first, source="simulated"
        )
    ]
    assert services.quotes_store(updates=batch_day2) == [btc.id]
    assert services.quotes_store(updates=batch_day2) == []  # same batch again: no effect
    store(btc, "120", day2_first + timedelta(hours=5))
    quote.refresh_from_db()
    assert quote.reference_price == 105
    assert quote.reference_ts == day1.replace(hour=23, minute=59, second=59)
    state = live_states.portfolio_states(
        portfolio_ids=[alice.id], now=day2_first + timedelta(hours=5)
    )[0]
    assert state["holdings"][0]["day_change"] == "30.00"  # 2 x (120 - 105)
    assert state["holdings"][0]["day_change_pct"] == "14.29"
    assert state["day_change"] == "30.00"
    assert state["holdings"][0]["stale"] is False
    # An older tick from day 1 arriving late changes neither price nor reference.
    assert store(btc, "90", day1) == []
    quote.refresh_from_db()
    assert (quote.price, quote.reference_price) == (120, 105)


def test_a_price_older_than_the_stale_limit_is_flagged(world, settings):
    settings.LIVEFOLIO_STALE_SECONDS = 60
    store(world["btc"], "100", T0)
    alice = world["portfolios"]["alice"]
    fresh = live_states.portfolio_states(portfolio_ids=[alice.id], now=T0 + timedelta(seconds=59))
    stale = live_states.portfolio_states(portfolio_ids=[alice.id], now=T0 + timedelta(seconds=61))
    assert fresh[0]["holdings"][0]["stale"] is False
    assert stale[0]["holdings"][0]["stale"] is True
    assert stale[0]["holdings"][0]["price_age_seconds"] == 61


SQLITE_SCRIPT = """
import json
from datetime import UTC, datetime
from decimal import Decimal
import django
django.setup()
from django.core.management import call_command
from portfolio import services
from portfolio.models import Instrument, Quote
call_command("migrate", verbosity=0)
btc = Instrument.objects.create(symbol="BTC-USD", name="Bitcoin", asset_class="crypto",
                                quote_currency="USD", feed="simulated", feed_symbol="BTC-USD")
def store(price, ts):
    return services.quotes_store(updates=[services.QuoteUpdate(
        instrument_id=btc.id, price=Decimal(price), exchange_ts=ts, source="simulated")])
out = []
out.append(store("100", datetime(2026, 11, 26, 9, 0, tzinfo=UTC)))
out.append(store("105", datetime(2026, 11, 26, 23, 59, 59, tzinfo=UTC)))
out.append(store("110", datetime(2026, 11, 27, 0, 0, 1, tzinfo=UTC)))
out.append(store("110", datetime(2026, 11, 27, 0, 0, 1, tzinfo=UTC)))
out.append(store("90", datetime(2026, 11, 26, 10, 0, tzinfo=UTC)))
q = Quote.objects.get()
print(json.dumps({"changed": out, "price": str(q.price), "reference": str(q.reference_price),
                  "reference_ts": q.reference_ts.isoformat()}))
"""


def test_quotes_store_keeps_the_reference_price_and_idempotence_on_sqlite(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="portfolio.settings",
        LIVEFOLIO_SQLITE_PATH=str(tmp_path / "quotes.sqlite3"),
    )
    done = subprocess.run(
        [sys.executable, "-c", SQLITE_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["changed"] == [[1], [1], [1], [], []]
    assert Decimal(got["price"]) == 110
    assert Decimal(got["reference"]) == 105
    assert got["reference_ts"] == "2026-11-26T23:59:59+00:00"


def test_a_closed_position_does_not_stop_valuations_of_the_open_ones(world):
    alice = world["portfolios"]["alice"]
    buy(alice, world["eth"], "1", "100", T0)
    sell(alice, world["eth"], "1", "120", T0 + timedelta(hours=1))  # ETH is now flat
    assert holding(alice, world["eth"]).quantity == 0
    holders = dict(live_states.portfolios_holding(instrument_ids=[world["btc"].id]))
    assert alice.id in holders
    eth_holders = dict(live_states.portfolios_holding(instrument_ids=[world["eth"].id]))
    assert alice.id not in eth_holders  # nothing of hers moves with ETH any more
    assert world["portfolios"]["bob"].id in eth_holders


def test_every_transaction_kind_and_cost_basis_method_has_a_label_for_forms():
    from portfolio.models import COST_BASIS_CHOICES, TX_KIND_CHOICES

    assert [kind for kind, _ in TX_KIND_CHOICES] == list(TxKind)
    assert [method for method, _ in COST_BASIS_CHOICES] == list(CostBasis)
