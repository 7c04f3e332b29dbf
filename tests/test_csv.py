"""CSV import is all or nothing and reports every bad row; export reads back as the same ledger."""

import io
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portfolio import services
from portfolio.importers import transactions_csv
from portfolio.models import CashBalance, Holding, Transaction


def run_import(portfolio, text):
    return transactions_csv.import_csv(portfolio=portfolio, text=io.StringIO(text))


GOOD = """date,type,symbol,quantity,price,fee,amount,currency,note
2026-01-02,DEPOSIT,,,,,5000,USD,salary
2026-01-03T10:00:00Z,BUY,ETH-USD,2,1500,3,,,first
2026-01-04T10:00:00+01:00,SELL,ETH-USD,0.5,1800,1.5,,,
2026-02-01,DIVIDEND,ETH-USD,,,,12.5,USD,staking
"""


def ledger_of(portfolio):
    return [
        (
            tx.executed_at,
            tx.kind,
            tx.instrument_id,
            tx.quantity,
            tx.price,
            tx.fees,
            tx.amount,
            tx.currency,
            tx.ratio,
            tx.note,
        )
        for tx in Transaction.objects.filter(portfolio=portfolio).order_by("executed_at", "id")
    ]


def test_a_good_file_is_imported_and_holdings_recomputed(world):
    bob = world["portfolios"]["bob"]
    result = run_import(bob, GOOD)
    assert result.ok and result.imported == 4
    eth = Holding.objects.get(portfolio=bob, instrument=world["eth"])
    assert eth.quantity == Decimal("11.5")  # 10 from the world + 2 - 0.5
    # FIFO: the 0.5 sold (09:00Z on 4 January) comes from the 3 January lot, 2 for 3003
    # (the world's own BUY is dated 5 January): 900 - 1.5 fee - 750.75 cost.
    assert eth.realized_pnl == Decimal("147.75")
    usd = CashBalance.objects.get(portfolio=bob, currency="USD")
    assert usd.amount == 5000 - 3003 + 900 - Decimal("1.5") + Decimal("12.5")


def test_one_bad_row_in_the_middle_imports_nothing_and_names_its_line(world):
    bob = world["portfolios"]["bob"]
    before = ledger_of(bob)
    lines = GOOD.splitlines()
    lines.insert(3, "2026-01-03T11:00:00Z,BUY,ETH-USD,two,1500,,,,")
    result = run_import(bob, "\n".join(lines) + "\n")
    assert not result.ok
    assert [str(e) for e in result.errors] == ["line 4: quantity: 'two' is not a number"]
    assert result.imported == 0
    assert ledger_of(bob) == before
    assert Holding.objects.get(portfolio=bob, instrument=world["eth"]).quantity == 10


def test_every_bad_row_of_every_kind_is_reported_in_one_pass_and_nothing_is_written(world):
    bob = world["portfolios"]["bob"]
    before = ledger_of(bob)
    text = """date,type,symbol,quantity,price,fee,amount,currency
2026-01-02,DEPOSIT,,,,,5000,USD
yesterday,BUY,ETH-USD,1,1500,,,
2026-01-03,SWAP,ETH-USD,1,1500,,,
2026-01-03,BUY,DOGE-USD,1,0.1,,,
2026-01-03,BUY,ETH-USD,1,1500,-2,,
2026-01-03,BUY,PEPE,5,1,,,
2026-01-05,SELL,ETH-USD,50,1600,,,
2026-01-06,SELL,ETH-USD,40,1600,,,
2026-01-07,DIVIDEND,ETH-USD,,,,,USD
"""
    result = run_import(bob, text)
    without = " (checked without the 6 rows with field errors)"
    assert [str(e) for e in result.errors] == [
        "line 3: date: 'yesterday' is not an ISO-8601 date or date-time "
        "(e.g. 2026-03-01T14:30:00Z)",
        "line 4: type: 'SWAP' is not one of BUY, SELL, DIVIDEND, INTEREST, FEE, DEPOSIT, "
        "WITHDRAWAL, SPLIT, TRANSFER_IN, TRANSFER_OUT, EXCHANGE",
        "line 5: symbol: unknown symbol 'DOGE-USD'",
        "line 6: fee: must not be negative, got -2",
        "line 7: symbol: unknown symbol 'PEPE'",
        # The ledger's refusals in the same report: the world buys its 10 ETH on 5 Jan 15:01.
        "line 8: quantity: cannot sell 50 of 'ETH-USD' on 2026-01-05T00:00:00+00:00: "
        "held 0, requested 50" + without,
        "line 9: quantity: cannot sell 40 of 'ETH-USD' on 2026-01-06T00:00:00+00:00: "
        "held 10, requested 40" + without,
        "line 10: amount: must be positive for DIVIDEND, got 0",
    ]
    assert result.unknown_symbols == ["DOGE-USD", "PEPE"]
    assert result.imported == 0
    assert ledger_of(bob) == before  # atomic: not even the good deposit on line 2


def test_ledger_refusals_alone_are_all_reported_with_their_lines(world):
    bob = world["portfolios"]["bob"]
    text = """date,type,symbol,quantity,price,fee,amount,currency
2026-01-02,DEPOSIT,,,,,5000,USD
2026-01-05,SELL,ETH-USD,50,1600,,,
2026-01-06,SELL,ETH-USD,40,1600,,,
"""
    result = run_import(bob, text)
    assert [e.line for e in result.errors] == [3, 4]
    assert result.errors[0].message == (
        "quantity: cannot sell 50 of 'ETH-USD' on 2026-01-05T00:00:00+00:00: held 0, requested 50"
    )
    assert "cannot sell 40 of 'ETH-USD'" in result.errors[1].message
    assert Transaction.objects.filter(portfolio=bob).count() == 2


def test_ghostfolio_style_columns_and_lowercase_types_are_understood(world):
    alice = world["portfolios"]["alice"]
    text = """accountId,comment,fee,quantity,type,unitPrice,currency,dataSource,date,symbol
acc-1,dca,1.25,0.1,buy,45000,USD,YAHOO,2026-02-01T09:30:00.000Z,btc-usd
acc-1,,0,0.05,sell,47000,USD,YAHOO,2026-02-10T09:30:00.000Z,BTC-USD
"""
    result = run_import(alice, text)
    assert result.ok, result.errors
    rows = Transaction.objects.filter(portfolio=alice, note="dca")
    assert [(t.kind, t.quantity, t.price, t.fees) for t in rows] == [
        ("BUY", Decimal("0.1"), Decimal("45000"), Decimal("1.25"))
    ]
    assert Holding.objects.get(portfolio=alice, instrument=world["btc"]).quantity == Decimal("2.05")
    text = "Date,Action,Ticker,Qty,Price,Commission\n2026-03-01,Buy,ETH-USD,3,2000,2\n"
    assert run_import(alice, text).ok
    eth = Holding.objects.get(portfolio=alice, instrument=world["eth"])
    assert (eth.quantity, eth.cost_basis) == (3, 6002)


def test_export_then_import_into_an_empty_portfolio_gives_the_same_ledger(world):
    alice = world["portfolios"]["alice"]
    assert run_import(alice, GOOD.replace("ETH-USD", "BTC-USD")).ok
    services.transaction_add(
        portfolio=alice,
        kind="SPLIT",
        instrument=world["btc"],
        ratio=Decimal("2"),
        executed_at=Transaction.objects.latest("executed_at").executed_at,
        note='split, "quoted"',
    )
    exported = transactions_csv.export_csv(portfolio=alice)
    copy = services.portfolio_create(owner=world["users"]["alice"], name="Copy")
    result = run_import(copy, exported)
    assert result.ok, result.errors
    assert [row[1:] for row in ledger_of(copy)] == [row[1:] for row in ledger_of(alice)]
    assert [row[0] for row in ledger_of(copy)] == [row[0] for row in ledger_of(alice)]
    original = Holding.objects.get(portfolio=alice, instrument=world["btc"])
    copied = Holding.objects.get(portfolio=copy, instrument=world["btc"])
    assert (copied.quantity, copied.cost_basis, copied.realized_pnl) == (
        original.quantity,
        original.cost_basis,
        original.realized_pnl,
    )
    assert transactions_csv.export_csv(portfolio=copy) == exported


def test_importcsv_command_prints_progress_and_fails_naming_the_rows(world, tmp_path, capsys):
    bob = world["portfolios"]["bob"]
    good = tmp_path / "good.csv"
    good.write_text(GOOD)
    call_command("importcsv", str(bob.id), str(good))
    out = capsys.readouterr().out
    assert "checked 4 of 4 rows" in out
    assert "stored 4 of 4 rows" in out
    assert "Imported 4 transactions." in out
    bad = tmp_path / "bad.csv"
    bad.write_text("date,type,symbol,quantity,price\n2026-01-01,BUY,NOPE,1,1\n")
    with pytest.raises(CommandError, match="nothing imported: 1 bad rows out of 1"):
        call_command("importcsv", str(bob.id), str(bad))
    err = capsys.readouterr().err
    assert "line 2: symbol: unknown symbol 'NOPE'" in err
    assert "Unknown symbols: NOPE" in err
    assert Transaction.objects.filter(portfolio=bob).count() == 6


def test_exportcsv_command_writes_what_the_download_serves(world, tmp_path):
    alice = world["portfolios"]["alice"]
    target = tmp_path / "alice.csv"
    call_command("exportcsv", str(alice.id), str(target))
    text = target.read_bytes().decode()
    assert text == transactions_csv.export_csv(portfolio=alice)
    assert text.splitlines()[0] == ",".join(transactions_csv.COLUMNS)
    assert text.splitlines()[2] == "2026-01-05T15:01:00Z,BUY,BTC-USD,2,500,,,USD,,,,"


KINDS = st.sampled_from(["BUY", "SELL", "DEPOSIT", "WITHDRAWAL", "DIVIDEND", "FEE", "SPLIT"])
AMOUNTS = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("100000"), places=2)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(KINDS, AMOUNTS, AMOUNTS, st.integers(0, 10_000), st.text(max_size=20)),
        min_size=1,
        max_size=12,
    )
)
def test_any_ledger_exported_and_imported_into_an_empty_portfolio_is_the_same(world, steps):
    owner = world["users"]["charlie"]
    source = services.portfolio_create(owner=owner, name=f"Source {uuid.uuid4()}")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for kind, first, second, minutes, note in steps:
        fields = {"executed_at": start + timedelta(minutes=minutes), "note": note}
        if kind in ("BUY", "SELL"):
            fields |= {"instrument": world["btc"], "quantity": first / 100, "price": second}
        elif kind == "SPLIT":
            fields |= {"instrument": world["btc"], "ratio": Decimal(2)}
        elif kind == "DIVIDEND":
            fields |= {"instrument": world["btc"], "amount": first}
        else:
            fields |= {"amount": first}
        try:
            services.transaction_add(portfolio=source, kind=kind, **fields)
        except ValidationError:
            pass  # a sale of more than is held: the ledger refuses it, the story goes on
    copy = services.portfolio_create(owner=owner, name=f"Copy {uuid.uuid4()}")
    result = run_import(copy, transactions_csv.export_csv(portfolio=source))
    assert result.ok, result.errors
    assert ledger_of(copy) == ledger_of(source)
    holdings = lambda p: list(  # noqa: E731
        Holding.objects.filter(portfolio=p).values_list("quantity", "cost_basis", "realized_pnl")
    )
    assert holdings(copy) == holdings(source)
    cash = lambda p: list(  # noqa: E731
        CashBalance.objects.filter(portfolio=p).values_list("currency", "amount")
    )
    assert cash(copy) == cash(source)


def test_a_file_the_csv_reader_cannot_read_is_reported_not_crashed_on(world):
    bob = world["portfolios"]["bob"]
    huge = "x" * 200_000  # over the csv module's field size limit
    result = run_import(bob, f"date,type,note\n2026-01-01,DEPOSIT,ok\n2026-01-02,FEE,{huge}\n")
    assert [(e.line, e.message) for e in result.errors] == [
        (3, "not readable as CSV: field larger than field limit (131072)")
    ]
    assert Transaction.objects.filter(portfolio=bob).count() == 2
