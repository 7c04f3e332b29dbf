"""No user ever sees another user's portfolios over the WebSocket, however many they own."""

from decimal import Decimal

import pytest
from channels.db import database_sync_to_async

from portfolio import services
from portfolio.ledger import TxKind
from tests.websocket import open_portfolio_page

pytestmark = pytest.mark.django_db(transaction=True)


async def snapshot_of(user):
    comm, message, _ = await open_portfolio_page(user)
    await comm.disconnect()
    return message["portfolios"]


def second_portfolio_for_alice(world):
    savings = services.portfolio_create(owner=world["users"]["alice"], name="Savings")
    services.transaction_add(
        portfolio=savings,
        kind=TxKind.DEPOSIT,
        amount=Decimal("250"),
        executed_at=world["portfolios"]["alice"].created_at,
    )
    return savings


async def test_each_snapshot_holds_only_the_users_own_portfolios(world, redis_client):
    savings = await database_sync_to_async(second_portfolio_for_alice)(world)
    alice = await snapshot_of(world["users"]["alice"])
    assert sorted(p["id"] for p in alice) == sorted([world["portfolios"]["alice"].id, savings.id])
    assert {p["name"]: p["cash_total"] for p in alice}["Savings"] == "250.00"
    for outsider in ("bob", "charlie"):
        theirs = await snapshot_of(world["users"][outsider])
        assert [p["id"] for p in theirs] == [world["portfolios"][outsider].id]
        assert all(p["name"] != "Savings" for p in theirs)
