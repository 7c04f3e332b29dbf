"""API v1 end to end: the documented example client against a real daphne and Celery worker."""

import sys
from datetime import UTC, datetime

import pytest

from streaming import tokens
from streaming.tasks import ingest_quotes
from tests.conftest import Process, stack_env

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]


def test_example_client_prints_a_live_quote_and_its_portfolios_value(
    world, celery_worker, daphne_server, tmp_path
):
    _row, token = tokens.token_create(user=world["users"]["alice"], name="example client")
    url = daphne_server.replace("http://", "ws://") + "/ws/v1/"
    client = Process(
        "api-client",
        [sys.executable, "docs/api_client.py", url],
        stack_env(LIVEFOLIO_TOKEN=token),
        tmp_path,
    )
    try:
        client.wait_for_output("portfolio Alice's 0.00 USD")  # snapshot: no price yet
        client.wait_for_output("quotes:BTC-USD: no data yet")  # it follows what alice holds
        # Through the broker to the worker process, which publishes on Redis to daphne.
        ingest_quotes.delay(
            [
                {
                    "instrument": world["btc"].id,
                    "price": "61234.5",
                    "ts": datetime.now(UTC).isoformat(),
                    "source": "simulated",
                }
            ]
        )
        client.wait_for_output("quote BTC-USD 61234.5 as of")
        client.wait_for_output("portfolio Alice's 122469.00 USD")  # 2 x 61234.5
    finally:
        client.stop()
    output = client.output()
    assert "ETH" not in output and "Bob" not in output and "Charlie" not in output
    secret = token.split("_", 2)[2]
    daphne_log = (tmp_path / "daphne.log").read_text()
    assert "/ws/v1/" in daphne_log  # daphne logged the connection, and not the token
    assert secret not in daphne_log
    assert secret not in celery_worker.output()
