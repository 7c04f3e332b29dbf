"""``manage.py importprices <symbol> <file>``: import an instrument's daily prices, all or
nothing."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from portfolio import services
from portfolio.importers import prices_csv
from portfolio.models import Instrument


class Command(BaseCommand):
    help = (
        "Import an instrument's daily prices from a CSV file with the columns "
        "date,close[,open,high,low,volume] (docs/csv-format.md)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("symbol", help="Livefolio's symbol of the instrument, e.g. BTC-USD.")
        parser.add_argument("file", type=Path)

    def handle(self, *args, **options) -> None:
        symbol = options["symbol"]
        instrument = Instrument.objects.filter(symbol__iexact=symbol).first()
        if instrument is None:
            raise CommandError(f"no instrument with the symbol {symbol!r}")
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        with path.open(newline="", encoding="utf-8-sig") as text:
            result = prices_csv.import_prices(instrument=instrument, text=text)
        if not result.ok:
            for error in result.errors:
                self.stderr.write(str(error))
            raise CommandError(
                f"nothing imported: {len(result.errors)} bad rows out of {result.rows}"
            )
        recomputed = services.holdings_recompute_after_fx_history(instrument=instrument)
        if recomputed:
            self.stdout.write(f"Recomputed {recomputed} portfolio(s) converting through it.")
        self.stdout.write(
            self.style.SUCCESS(
                f"Imported {result.created + result.replaced:,} days of {instrument.symbol} "
                f"({result.created:,} new, {result.replaced:,} replaced)."
            )
        )
