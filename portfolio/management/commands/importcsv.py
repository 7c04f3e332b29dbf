"""``manage.py importcsv <portfolio-id> <file>``: import transactions, all or nothing."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from portfolio.importers import transactions_csv
from portfolio.models import Portfolio


class Command(BaseCommand):
    help = "Import transactions from a CSV file (docs/csv-format.md) into a portfolio."

    def add_arguments(self, parser) -> None:
        parser.add_argument("portfolio_id", type=int)
        parser.add_argument("file", type=Path)

    def handle(self, *args, **options) -> None:
        portfolio = Portfolio.objects.filter(pk=options["portfolio_id"]).first()
        if portfolio is None:
            raise CommandError(f"no portfolio with id {options['portfolio_id']}")
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        self.stdout.write(f"Checking {path} for portfolio {portfolio.id} ({portfolio.name})…")

        def progress(stage: str, done: int, total: int) -> None:
            if stage == "stored" and done == 0:
                self.stdout.write(f"All {total:,} rows are valid; storing…")
            else:
                self.stdout.write(f"  {stage} {done:,} of {total:,} rows")

        with path.open(newline="", encoding="utf-8-sig") as text:
            result = transactions_csv.import_csv(portfolio=portfolio, text=text, progress=progress)
        if not result.ok:
            for error in result.errors:
                self.stderr.write(str(error))
            if result.unknown_symbols:
                self.stderr.write("Unknown symbols: " + ", ".join(result.unknown_symbols))
            raise CommandError(
                f"nothing imported: {len(result.errors)} bad rows out of {result.rows}"
            )
        self.stdout.write(self.style.SUCCESS(f"Imported {result.imported:,} transactions."))
