"""``manage.py demo``: the embedded default in one command (SQLite, feed inside the server)."""

from __future__ import annotations

import asyncio
import logging

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from portfolio.demo import DEMO_PASSWORD, DEMO_USERNAME, MARKET_SYMBOL, demo_seed

log = logging.getLogger(__name__)


async def snapshots_every_minute() -> None:
    """What Celery beat does on the real stack: value snapshots for the performance page."""
    from channels.db import database_sync_to_async

    from portfolio import services

    while True:
        try:
            await database_sync_to_async(services.valuation_snapshots_take)()
        except Exception:
            log.exception("demo: taking valuation snapshots failed")
        await asyncio.sleep(60)


class Command(BaseCommand):
    help = "Run Livefolio on the embedded default with a demo user and a simulated feed."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--seed", type=int, default=None, help="simulated feed random seed")
        parser.add_argument("--rate", type=float, default=10.0, help="simulated ticks per second")
        parser.add_argument(
            "--order-rate",
            type=float,
            default=20.0,
            help="order events per second in each simulated crypto market",
        )

    def handle(self, *args, **options) -> None:
        if not settings.EMBEDDED:
            raise CommandError(
                "demo runs only on the embedded default (unset REDIS_URL and DATABASE_URL); "
                "on the real stack start the processes in the Procfile instead."
            )
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        demo_seed()

        from portfolio.asgi import application
        from streaming.patches.websocket import Server
        from streaming.runner import FeedRunner

        runner = FeedRunner(
            kind="simulated",
            seed=options["seed"],
            rate=options["rate"],
            order_books=True,
            order_rate=options["order_rate"],
        )
        url = f"http://127.0.0.1:{options['port']}/"

        background: list[asyncio.Task] = []

        def ready() -> None:
            # The feed runs on daphne's own event loop: the in-memory channel layer is per loop.
            loop = asyncio.get_event_loop()
            # Kept referenced: the loop holds tasks only weakly.
            background.extend(
                [loop.create_task(runner.run()), loop.create_task(snapshots_every_minute())]
            )
            self.stdout.write(
                self.style.SUCCESS(f"Livefolio is running at {url}\n")
                + f"Log in as {DEMO_USERNAME} / {DEMO_PASSWORD}. "
                + f"The admin is at {url}{settings.ADMIN_PATH} (same login). Stop with Ctrl-C.\n"
                + f"Watch a simulated market's order book and trades at {url}i/{MARKET_SYMBOL}/\n"
            )

        # Bound to 127.0.0.1 only: the demo login must never be reachable from the network.
        Server(
            application=application,
            endpoints=[f"tcp:port={options['port']}:interface=127.0.0.1"],
            ready_callable=ready,
            verbosity=0,
        ).run()
