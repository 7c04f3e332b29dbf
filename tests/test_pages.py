"""The pages: ownership (alice owns, bob and charlie are outsiders), forms with field errors,
the transactions list filters, the performance page against a hand-computed example."""

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from portfolio import services
from portfolio.ledger import TxKind
from portfolio.models import DailyPrice, Holding, Portfolio, Transaction, ValuationSnapshot


@pytest.fixture
def client_for(client):
    def login(user):
        client.force_login(user)
        return client

    return login


def alice_urls(world):
    alice = world["portfolios"]["alice"]
    tx = Transaction.objects.filter(portfolio=alice).first()
    return {
        "get": [
            reverse("portfolio", args=[alice.id]),
            reverse("transactions", args=[alice.id]),
            reverse("transaction-add", args=[alice.id]),
            reverse("transaction-edit", args=[alice.id, tx.id]),
            reverse("transaction-import", args=[alice.id]),
            reverse("transaction-export", args=[alice.id]),
            reverse("performance", args=[alice.id]),
            reverse("portfolio-settings", args=[alice.id]),
        ],
        "post": [
            reverse("transaction-delete", args=[alice.id, tx.id]),
            reverse("transaction-edit", args=[alice.id, tx.id]),
            reverse("transaction-add", args=[alice.id]),
            reverse("portfolio-settings", args=[alice.id]),
        ],
    }


def test_owner_opens_every_page_of_her_portfolio(world, client_for):
    client = client_for(world["users"]["alice"])
    for url in alice_urls(world)["get"]:
        assert client.get(url).status_code == 200, url


@pytest.mark.parametrize("outsider", ["bob", "charlie"])
def test_outsiders_get_404_for_every_page_and_change_nothing(world, client_for, outsider):
    urls = alice_urls(world)
    alice = world["portfolios"]["alice"]
    before = list(Transaction.objects.filter(portfolio=alice).values_list("id", "quantity"))
    client = client_for(world["users"][outsider])
    for url in urls["get"]:
        assert client.get(url).status_code == 404, url
    for url in urls["post"]:
        data = {"kind": "SELL", "quantity": "2", "price": "1", "executed_at": "2026-02-01T10:00"}
        assert client.post(url, data).status_code == 404, url
    assert list(Transaction.objects.filter(portfolio=alice).values_list("id", "quantity")) == before
    # Bob cannot reach alice's transaction through his own portfolio's URL either.
    own = world["portfolios"][outsider]
    tx = Transaction.objects.filter(portfolio=alice).first()
    assert client.get(reverse("transaction-edit", args=[own.id, tx.id])).status_code == 404
    assert client.post(reverse("transaction-delete", args=[own.id, tx.id])).status_code == 404
    assert Transaction.objects.filter(pk=tx.pk).exists()
    # The home page and the switcher show only their own portfolios.
    page = client.get("/").content.decode()
    assert "Alice&#x27;s" not in page and "Alice's" not in page
    assert own.name.replace("'", "&#x27;") in page


def test_export_contains_only_the_owners_ledger(world, client_for):
    response = client_for(world["users"]["alice"]).get(
        reverse("transaction-export", args=[world["portfolios"]["alice"].id])
    )
    body = response.content.decode()
    assert response["Content-Type"].startswith("text/csv")
    assert "BTC-USD" in body and "ETH-USD" not in body
    assert len(body.strip().splitlines()) == 3  # header, deposit, buy


def test_adding_a_transaction_through_the_form_updates_the_holding(world, client_for):
    alice = world["portfolios"]["alice"]
    client = client_for(world["users"]["alice"])
    response = client.post(
        reverse("transaction-add", args=[alice.id]),
        {
            "kind": "BUY",
            "instrument": world["btc"].id,
            "executed_at": "2026-02-01T10:00",
            "quantity": "0.5",
            "price": "600",
            "fees": "",
            "amount": "",
            "currency": "",
            "note": "dip",
        },
    )
    assert response.status_code == 302
    assert Holding.objects.get(portfolio=alice, instrument=world["btc"]).quantity == Decimal("2.5")
    tx = Transaction.objects.get(note="dip")
    assert tx.executed_at == datetime(2026, 2, 1, 10, 0, tzinfo=UTC)
    assert tx.currency == "USD"


def field_errors(html, field):
    block = re.search(rf'data-field-name="{field}".*?</div>', html, re.S).group(0)
    return re.findall(r'class="error field-error"[^>]*>([^<]*)<', block)


def test_an_oversell_in_the_form_shows_the_ledger_message_next_to_quantity(world, client_for):
    alice = world["portfolios"]["alice"]
    client = client_for(world["users"]["alice"])
    response = client.post(
        reverse("transaction-add", args=[alice.id]),
        {
            "kind": "SELL",
            "instrument": world["btc"].id,
            "executed_at": "2026-02-01T10:00",
            "quantity": "5",
            "price": "600",
        },
    )
    assert response.status_code == 200
    html = response.content.decode()
    [message] = field_errors(html, "quantity")
    assert message.startswith("cannot sell 5 of &#x27;BTC-USD&#x27; on 2026-02-01T10:00:00+00:00")
    assert message.endswith("held 2, requested 5")
    assert field_errors(html, "price") == []
    response = client.post(
        reverse("transaction-add", args=[alice.id]),
        {"kind": "DEPOSIT", "executed_at": "2026-02-01T10:00", "amount": "abc"},
    )
    assert field_errors(response.content.decode(), "amount") == ["Enter a number."]
    assert Transaction.objects.filter(portfolio=alice).count() == 2


def test_transactions_list_filters_by_instrument_kind_and_dates(world, client_for):
    alice = world["portfolios"]["alice"]
    services.transaction_add(
        portfolio=alice,
        kind=TxKind.BUY,
        instrument=world["eth"],
        quantity=Decimal("1"),
        price=Decimal("10"),
        executed_at=datetime(2026, 3, 1, tzinfo=UTC),
    )
    client = client_for(world["users"]["alice"])
    url = reverse("transactions", args=[alice.id])

    def listed(**query):
        html = client.get(url, query).content.decode()
        return len(re.findall(r"<tr data-transaction=", html))

    assert listed() == 3
    assert listed(instrument=world["eth"].id) == 1
    assert listed(kind="DEPOSIT") == 1
    assert listed(kind="BUY") == 2
    assert listed(date_from="2026-02-01") == 1
    assert listed(date_to="2026-01-05") == 2
    assert listed(date_from="2026-01-06", date_to="2026-02-28") == 0


def test_creating_a_portfolio_and_changing_its_cost_basis_method(world, client_for):
    client = client_for(world["users"]["bob"])
    response = client.post(
        reverse("portfolio-create"),
        {"name": "Pension", "base_currency": "EUR", "cost_basis_method": "HIFO"},
    )
    pension = Portfolio.objects.get(owner=world["users"]["bob"], name="Pension")
    assert response.url == reverse("portfolio", args=[pension.id])
    assert pension.cost_basis_method == "HIFO"
    response = client.post(
        reverse("portfolio-create"),
        {"name": "Crypto", "base_currency": "u$d", "cost_basis_method": "HIFO"},
    )
    assert "Use an ISO-style currency code" in response.content.decode()
    assert not Portfolio.objects.filter(name="Crypto").exists()
    client.post(
        reverse("portfolio-settings", args=[pension.id]),
        {"name": "Pension", "cost_basis_method": "LIFO"},
    )
    pension.refresh_from_db()
    assert pension.cost_basis_method == "LIFO"


def test_upload_with_a_bad_row_shows_every_error_and_imports_nothing(world, client_for):
    alice = world["portfolios"]["alice"]
    client = client_for(world["users"]["alice"])
    csv = b"date,type,symbol,qty,price\n2026-02-01,BUY,BTC-USD,1,100\n2026-02-02,BUY,XYZ,1,1\n"
    response = client.post(
        reverse("transaction-import", args=[alice.id]),
        {"file": SimpleUploadedFile("t.csv", csv, content_type="text/csv")},
    )
    html = response.content.decode()
    assert "Nothing was imported" in html
    assert "line 3: symbol: unknown symbol &#x27;XYZ&#x27;" in html
    assert "Unknown symbols: XYZ" in html
    assert Transaction.objects.filter(portfolio=alice).count() == 2


def test_performance_page_shows_twr_and_irr_of_a_hand_computed_example(world, client_for):
    """Worked example. 1000 deposited before t0. Snapshots: 1000 at t0, 1100 at
    t1 = t0 + 365 days (just before a 500 deposit at t1), 1700 at t2 = t1 + 365 days.
    TWR = (1100 / 1000) x (1700 / (1100 + 500)) - 1 = 1.1 x 1.0625 - 1 = 16.875 % -> 16.88 %.
    IRR: -1000 x (1+r)^2 - 500 x (1+r) + 1700 = 0, so 1+r = (-500 + sqrt(7,050,000)) / 2000
    = 1.0775921..., r = 7.76 % a year (two years of exactly 365 days, actual/365)."""
    owner = world["users"]["alice"]
    portfolio = services.portfolio_create(owner=owner, name="Worked example")
    t2 = timezone.now() - timedelta(minutes=1)
    t1 = t2 - timedelta(days=365)
    t0 = t1 - timedelta(days=365)
    services.transaction_add(
        portfolio=portfolio,
        kind=TxKind.DEPOSIT,
        amount=Decimal("1000"),
        executed_at=t0 - timedelta(hours=1),  # before the first snapshot: already in its value
    )
    services.transaction_add(
        portfolio=portfolio, kind=TxKind.DEPOSIT, amount=Decimal("500"), executed_at=t1
    )
    for at, value in ((t0, "1000"), (t1, "1100"), (t2, "1700")):
        ValuationSnapshot.objects.create(portfolio=portfolio, taken_at=at, value=Decimal(value))

    html = client_for(owner).get(reverse("performance", args=[portfolio.id])).content.decode()

    def cell(period, css):
        row = re.search(rf'<tr data-period="{period}">.*?</tr>', html, re.S).group(0)
        return re.search(rf'class="num {css}">([^<]*)<', row).group(1)

    assert cell("MAX", "twr") == "16.88%"
    assert cell("MAX", "irr") == "7.76%"
    assert cell("1D", "twr") == "—"  # only t2 lies in the last day
    assert "needs two value snapshots in the period, has 1" in html
    assert cell("1W", "twr") == "—"
    working = re.search(r'id="period-MAX".*?</section>', html, re.S).group(0)
    sub_periods = re.findall(r'<tr class="sub-period">(.*?)</tr>', working, re.S)
    assert len(sub_periods) == 2
    assert "1,100.00" in sub_periods[1] and "500.00" in sub_periods[1]
    assert "6.25%" in sub_periods[1]
    assert "10.00%" in sub_periods[0]
    assert len(re.findall(r'<tr class="irr-flow">', working)) == 3
    assert "-1,000.00" in working and "1,700.00" in working


def test_live_strip_shows_returns_from_the_price_history_over_presets_and_a_chosen_range(
    world, client_for
):
    """Alice deposited 1,000 on 5 January 2026 and bought 2 BTC at 500 (world fixture); BTC
    closed at 500 until 30 June 2026 and at 560 from 1 July. From 5 January to 5 July: no
    flows, 1,000 -> 1,120, so TWR 12.00 % and the IRR for the period (under a year) 12.00 %.
    Max: 0 on 4 January, +1,000 on the 5th, 1,120 now: TWR 12.00 %. The value snapshots (none
    here) play no part."""
    today = timezone.now().date()
    first = date(2026, 1, 1)
    DailyPrice.objects.bulk_create(
        DailyPrice(
            instrument=world["btc"],
            day=first + timedelta(days=i),
            close=Decimal(500 if first + timedelta(days=i) < date(2026, 7, 1) else 560),
            source="csv",
        )
        for i in range((today - first).days + 1)
    )
    alice = world["portfolios"]["alice"]
    url = reverse("portfolio", args=[alice.id])
    live = client_for(world["users"]["alice"]).get(url, {"from": "2026-01-05", "to": "2026-07-05"})
    html = live.content.decode()

    def strip(period):
        return re.search(rf'<div data-period="{period}">.*?</div>', html, re.S).group(0)

    custom = strip("custom")
    assert "2026-01-05 → 2026-07-05" in custom
    assert re.search(r'class="twr">12.00%<', custom) and re.search(r'class="irr">12.00%<', custom)
    assert "for the period" in custom
    working = reverse("performance", args=[alice.id]) + "?from=2026-01-05&amp;to=2026-07-05"
    assert working in custom  # the working of exactly this range
    assert re.search(r'class="twr">12.00%<', strip("MAX"))
    assert re.search(r'class="twr">0.00%<', strip("1D"))
    for period in ("1W", "1M", "YTD", "1Y"):
        assert strip(period)

    bad = client_for(world["users"]["alice"]).get(url, {"from": "2026-02-30", "to": "2026-03-01"})
    assert "from: &#x27;2026-02-30&#x27; is not a date like 2026-03-01" in bad.content.decode()
    assert 'data-period="custom"' not in bad.content.decode()


def test_beat_task_snapshots_each_portfolio_once_per_instant(world):
    from streaming.tasks import snapshot_valuations

    assert snapshot_valuations() == 3
    at = timezone.now()
    assert services.valuation_snapshots_take(at=at) == 3
    assert services.valuation_snapshots_take(at=at) == 0
    snap = ValuationSnapshot.objects.get(portfolio=world["portfolios"]["alice"], taken_at=at)
    assert snap.value == 0  # no BTC price yet, cash 0: nothing valued
    assert snap.net_flows == 1000


def test_snapshots_of_many_portfolios_cost_the_queries_of_one_chunk(
    world, django_assert_max_num_queries, monkeypatch
):
    """Beat values every portfolio each minute: a fixed number of queries per 500 of them, with
    each value and each portfolio's flows (in its base currency, at or before the instant)."""
    from portfolio.models import Quote
    from portfolio.selectors import live_states
    from tests.test_portfolio_ledger import fx_world

    now = timezone.now()
    eurusd, _ = fx_world(world)
    for instrument, price in ((world["btc"], "600"), (world["eth"], "90"), (eurusd, "1.25")):
        Quote.objects.create(
            instrument=instrument, price=Decimal(price), exchange_ts=now, received_at=now
        )
    owner = world["users"]["bob"]
    euro = []
    for i in range(40):
        portfolio = services.portfolio_create(owner=owner, name=f"Euro {i}", base_currency="EUR")
        for amount, currency, at in (
            ("1000", "USD", now - timedelta(days=2)),  # 800 EUR at 1.25
            ("50", "EUR", now - timedelta(days=1)),
            ("70", "CHF", now - timedelta(days=1)),  # no CHF rate: left out
        ):
            services.transaction_add(
                portfolio=portfolio,
                kind=TxKind.DEPOSIT,
                amount=Decimal(amount),
                currency=currency,
                executed_at=at,
            )
        services.transaction_add(
            portfolio=portfolio,
            kind=TxKind.BUY,
            instrument=world["eth"],
            quantity=Decimal(i + 1),
            price=Decimal("1"),
            currency="USD",
            executed_at=now - timedelta(hours=1),
        )
        services.transaction_add(  # after the instant: not in its flows
            portfolio=portfolio,
            kind=TxKind.WITHDRAWAL,
            amount=Decimal("5"),
            currency="EUR",
            executed_at=now + timedelta(minutes=1),
        )
        euro.append(portfolio)

    with django_assert_max_num_queries(14):  # 43 portfolios; one at a time took ~10 each
        assert services.valuation_snapshots_take(at=now) == 43
    snapshots = {s.portfolio_id: s for s in ValuationSnapshot.objects.filter(taken_at=now)}
    states = {s["id"]: s for s in live_states.portfolio_states(portfolio_ids=list(snapshots))}
    for pid, snapshot in snapshots.items():
        assert snapshot.value == Decimal(states[pid]["total"]), pid
    assert {snapshots[p.id].net_flows for p in euro} == {Decimal("850")}
    assert snapshots[world["portfolios"]["alice"].id].value == Decimal("1200")  # 2 BTC at 600
    assert snapshots[euro[3].id].value != snapshots[euro[4].id].value  # 4 ETH and 5 ETH

    # In chunks of 7 (the last one short), a second earlier instant: the same rows.
    monkeypatch.setattr(services, "SNAPSHOT_CHUNK", 7)
    earlier = now - timedelta(seconds=1)
    assert services.valuation_snapshots_take(at=earlier) == 43
    assert services.valuation_snapshots_take(at=earlier) == 0
    again = ValuationSnapshot.objects.filter(taken_at=earlier)
    assert {s.portfolio_id: (s.value, s.net_flows) for s in again} == {
        pid: (s.value, s.net_flows) for pid, s in snapshots.items()
    }


def test_the_switcher_keeps_the_page_and_lists_only_own_portfolios(world, client_for):
    alice = world["portfolios"]["alice"]
    savings = services.portfolio_create(owner=world["users"]["alice"], name="Savings")
    html = client_for(world["users"]["alice"]).get(reverse("performance", args=[alice.id]))
    options = re.findall(r'<option value="([^"]+)"', html.content.decode())
    assert options == [
        reverse("performance", args=[alice.id]),
        reverse("performance", args=[savings.id]),
    ]


def test_admin_recompute_action_rebuilds_holdings_from_the_ledger(world, admin_client):
    alice = world["portfolios"]["alice"]
    Holding.objects.filter(portfolio=alice).update(quantity=Decimal("99"))
    response = admin_client.post(
        reverse("admin:portfolio_portfolio_changelist"),
        {"action": "recompute_holdings", "_selected_action": [alice.id]},
        follow=True,
    )
    assert "Recomputed 1 portfolio(s)." in response.content.decode()
    assert Holding.objects.get(portfolio=alice).quantity == 2
    listing = admin_client.get(
        reverse("admin:portfolio_transaction_changelist"), {"kind__exact": "BUY"}
    )
    assert listing.status_code == 200
    assert listing.content.decode().count('<td class="field-kind">Buy<') == 3  # one BUY each


def test_under_a_year_the_irr_is_the_rate_for_the_period_not_annualized(world, client_for):
    """Two hours: 1000 at t0, 1000 at t1 = t0 + 1 h just before a 1000 deposit, 2020 at t2.
    TWR = 1000/1000 x 2020/2000 - 1 = 1.00 %. Period IRR with x = sqrt(1 + r) (t1 is half the
    period): 1000 x^2 + 1000 x - 2020 = 0, x = (-1000 + sqrt(9,080,000)) / 2000 = 1.0066519,
    1 + r = 1.0133480, r = 1.33 % for the period (annualized it would overflow)."""
    owner = world["users"]["bob"]
    portfolio = services.portfolio_create(owner=owner, name="Two hours")
    t2 = timezone.now() - timedelta(minutes=1)
    t1, t0 = t2 - timedelta(hours=1), t2 - timedelta(hours=2)
    services.transaction_add(
        portfolio=portfolio, kind=TxKind.DEPOSIT, amount=Decimal("1000"), executed_at=t1
    )
    for at, value in ((t0, "1000"), (t1, "1000"), (t2, "2020")):
        ValuationSnapshot.objects.create(portfolio=portfolio, taken_at=at, value=Decimal(value))
    html = client_for(owner).get(reverse("performance", args=[portfolio.id])).content.decode()
    row = re.search(r'<tr data-period="1D">.*?</tr>', html, re.S).group(0)
    assert re.search(r'class="num twr">([^<]*)<', row).group(1) == "1.00%"
    assert re.search(r'class="num irr">([^<]*)<', row).group(1) == "1.33%"
    assert re.search(r'class="muted irr-basis">([^<]*)<', row).group(1) == "for the period"
    working = re.search(r'id="period-1D".*?</section>', html, re.S).group(0)
    dates = re.findall(r'<tr class="irr-flow"><td>([^<]*)</td>', working)
    assert dates == [f"{at:%Y-%m-%d %H:%M}" for at in (t0, t1, t2)]  # real dates, not stretched
    assert "Share of the period" in working


def test_a_sale_shows_its_realized_pnl_and_the_lots_it_closed(world, client_for):
    """FIFO by hand: alice bought 2 BTC at 500 (cost 1000), then 1 at 700; selling 2.5 at 1000
    closes the first lot whole (2, cost 1000) and 0.5 of the second (cost 350): proceeds 2500,
    cost 1350, realized 1150."""
    alice = world["users"]["alice"]
    portfolio = world["portfolios"]["alice"]
    later = timezone.now() - timedelta(hours=2)
    services.transaction_add(
        portfolio=portfolio, kind=TxKind.DEPOSIT, amount=Decimal("700"), executed_at=later
    )
    services.transaction_add(
        portfolio=portfolio,
        kind=TxKind.BUY,
        instrument=world["btc"],
        quantity=Decimal("1"),
        price=Decimal("700"),
        executed_at=later,
    )
    sale = services.transaction_add(
        portfolio=portfolio,
        kind=TxKind.SELL,
        instrument=world["btc"],
        quantity=Decimal("2.5"),
        price=Decimal("1000"),
        executed_at=later + timedelta(minutes=30),
    )
    html = client_for(alice).get(reverse("transactions", args=[portfolio.id])).content.decode()
    row = re.search(rf'<tr class="realization" data-realized="{sale.id}">.*?</tr>', html, re.S)
    text = " ".join(row.group(0).split())
    assert 'class="up pnl">1,150.00 USD<' in text  # money: 2 decimals, thousands separators
    assert "proceeds 2,500.00 \u2212 cost 1,350.00" in text  # a minus sign
    assert re.findall(r'<span class="lot">([^<]*)</span>', text) == [
        "2 opened 2026-01-05 (cost 1,000.00)",  # the world's first buy
        f"0.5 opened {later:%Y-%m-%d} (cost 350.00)",
    ]
