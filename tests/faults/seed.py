"""Migrate a private database and build the story world in it; print the ids as JSON.

Run by the fault fixtures as ``python -m tests.faults.seed`` with DATABASE_URL pointing at the
private PostgreSQL (the test process itself stays on the shared test database).
"""

import json
from datetime import timedelta
from decimal import Decimal

import django


def main() -> None:
    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.utils import timezone

    from portfolio import services
    from portfolio.ledger import TxKind
    from portfolio.models import AssetClass, FeedKind, Instrument
    from tests.conftest import password_hash

    call_command("migrate", verbosity=0)
    users = {
        name: get_user_model().objects.create(username=name, password=password_hash())
        for name in ("alice", "bob", "charlie")
    }
    instruments = {
        symbol: Instrument.objects.create(
            symbol=symbol,
            name=name,
            asset_class=AssetClass.CRYPTO,
            quote_currency="USD",
            feed=FeedKind.SIMULATED,
            feed_symbol=symbol,
        )
        for symbol, name in (("BTC-USD", "Bitcoin"), ("ETH-USD", "Ether"))
    }
    portfolios = {}
    for name, symbol, quantity in (
        ("alice", "BTC-USD", "2"),
        ("bob", "ETH-USD", "10"),
        ("charlie", "BTC-USD", "3"),
    ):
        portfolio = services.portfolio_create(owner=users[name], name=f"{name.title()}'s")
        # Bought through the ledger with a matching deposit: no cash is left, so a portfolio's
        # total is exactly quantity x price.
        bought_at = timezone.now() - timedelta(days=1)
        services.transaction_add(
            portfolio=portfolio,
            kind=TxKind.DEPOSIT,
            amount=Decimal(quantity) * 100,
            executed_at=bought_at,
        )
        services.transaction_add(
            portfolio=portfolio,
            kind=TxKind.BUY,
            instrument=instruments[symbol],
            quantity=Decimal(quantity),
            price=Decimal("100"),
            executed_at=bought_at,
        )
        portfolios[name] = portfolio.id
    from streaming import tokens

    _token, api_token = tokens.token_create(user=users["alice"], name="fault-suite bot")
    print(
        json.dumps(
            {
                "api_token": api_token,
                "users": {name: user.id for name, user in users.items()},
                "portfolios": portfolios,
                "btc": instruments["BTC-USD"].id,
                "eth": instruments["ETH-USD"].id,
            }
        )
    )


if __name__ == "__main__":
    main()
