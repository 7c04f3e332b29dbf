"""``manage.py exportcsv <portfolio-id> [file]``: the ledger as CSV (stdout without a file)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from portfolio.importers import transactions_csv
from portfolio.models import Portfolio


class Command(BaseCommand):
    help = "Export a portfolio's transactions as CSV (docs/csv-format.md)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("portfolio_id", type=int)
        parser.add_argument("file", type=Path, nargs="?")

    def handle(self, *args, **options) -> None:
        portfolio = Portfolio.objects.filter(pk=options["portfolio_id"]).first()
        if portfolio is None:
            raise CommandError(f"no portfolio with id {options['portfolio_id']}")
        text = transactions_csv.export_csv(portfolio=portfolio)
        if options["file"] is None:
            self.stdout.write(text, ending="")
        else:
            options["file"].write_bytes(text.encode("utf-8"))  # CRLF kept as written
            self.stderr.write(f"Wrote {text.count(chr(10)) - 1} transactions to {options['file']}")
