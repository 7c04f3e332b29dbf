"""``manage.py backfillprices <symbol> --since YYYY-MM-DD``: daily prices from the instrument's
exchange (Binance klines, Coinbase candles, Kraken OHLC)."""

from __future__ import annotations

from datetime import date

from django.core.management.base import BaseCommand, CommandError

from portfolio import exchange_candles
from portfolio.models import Instrument


class Command(BaseCommand):
    help = (
        "Backfill an instrument's daily prices from its exchange's public REST candles, from "
        "--since to yesterday (UTC). Days imported from CSV are kept."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("symbol", help="Livefolio's symbol of the instrument, e.g. BTC-USD.")
        parser.add_argument(
            "--since", required=True, type=date.fromisoformat, help="First day, e.g. 2025-01-01."
        )

    def handle(self, *args, **options) -> None:
        symbol = options["symbol"]
        instrument = Instrument.objects.filter(symbol__iexact=symbol).first()
        if instrument is None:
            raise CommandError(f"no instrument with the symbol {symbol!r}")
        try:
            stored = exchange_candles.backfill(instrument=instrument, since=options["since"])
        except (exchange_candles.BackfillError, ValueError) as exc:
            raise CommandError(f"nothing stored: {exc}") from None
        self.stdout.write(
            self.style.SUCCESS(
                f"{instrument.symbol}: {stored.created} days added, {stored.replaced} replaced, "
                f"{stored.kept} kept (imported)."
            )
        )
