"""Holdings stored before the ledger existed become TRANSFER_IN transactions, so recomputing
from the ledger keeps them (quantity and total cost preserved)."""

from django.db import migrations
from django.utils import timezone


def holdings_to_transfers(apps, schema_editor):
    Holding = apps.get_model("portfolio", "Holding")
    Transaction = apps.get_model("portfolio", "Transaction")
    now = timezone.now()
    for holding in Holding.objects.select_related("instrument").filter(quantity__gt=0):
        if Transaction.objects.filter(portfolio_id=holding.portfolio_id).exists():
            continue
        Transaction.objects.create(
            portfolio_id=holding.portfolio_id,
            kind="TRANSFER_IN",
            instrument_id=holding.instrument_id,
            quantity=holding.quantity,
            price=holding.cost_basis / holding.quantity,
            currency=holding.instrument.quote_currency,
            executed_at=now,
            note="Holding recorded before the ledger existed",
        )
        holding.currency = holding.instrument.quote_currency
        holding.save(update_fields=["currency"])


class Migration(migrations.Migration):
    dependencies = [("portfolio", "0002_ledger")]
    operations = [migrations.RunPython(holdings_to_transfers, migrations.RunPython.noop)]
