"""Forms: parse and show input; the services decide what is valid for the ledger."""

from __future__ import annotations

from decimal import Decimal

from django import forms

from portfolio.ledger import TxKind
from portfolio.models import TX_KIND_CHOICES, Instrument, Portfolio, Transaction

DATETIME_LOCAL = "%Y-%m-%dT%H:%M"


class PortfolioForm(forms.ModelForm):
    class Meta:
        model = Portfolio
        fields = ["name", "base_currency", "cost_basis_method", "allow_short"]

    def clean_base_currency(self) -> str:
        return self.cleaned_data["base_currency"].strip().upper()


class PortfolioSettingsForm(forms.ModelForm):
    class Meta:
        model = Portfolio
        fields = ["name", "cost_basis_method", "allow_short"]


class TransactionForm(forms.ModelForm):
    """Every field of a transaction; which ones matter depends on the kind (see help texts)."""

    executed_at = forms.DateTimeField(
        label="Executed at (UTC)",
        input_formats=[DATETIME_LOCAL, "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format=DATETIME_LOCAL),
    )

    class Meta:
        model = Transaction
        fields = [
            "kind",
            "instrument",
            "executed_at",
            "quantity",
            "price",
            "fees",
            "amount",
            "ratio",
            "currency",
            "to_amount",
            "to_currency",
            "note",
        ]
        help_texts = {
            "quantity": "Buy, sell and transfers.",
            "price": "Per unit: buy, sell and transfers.",
            "amount": "Dividend, interest, fee, deposit and withdrawal; a currency exchange's "
            "amount sold.",
            "currency": "Empty: the instrument's currency, or the portfolio's base currency. "
            "A currency exchange: the currency sold (and its fee's).",
        }
        labels = {"to_amount": "Amount bought", "to_currency": "Currency bought"}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["instrument"].queryset = Instrument.objects.exclude(asset_class="fx")
        for name in ("quantity", "price", "fees", "amount", "to_amount"):
            self.fields[name].required = False
        self.fields["kind"].initial = TxKind.BUY

    def clean_currency(self) -> str:
        return self.cleaned_data["currency"].strip().upper()

    def clean_to_currency(self) -> str:
        return self.cleaned_data["to_currency"].strip().upper()

    def clean(self) -> dict:
        cleaned = super().clean()
        for name in ("quantity", "price", "fees", "amount", "to_amount"):
            if cleaned.get(name) is None and name not in self.errors:
                cleaned[name] = Decimal(0)
        return cleaned

    def _post_clean(self) -> None:
        # Model validation runs in the service, with the ledger's rules and messages.
        pass


class TransactionFilterForm(forms.Form):
    instrument = forms.ModelChoiceField(queryset=Instrument.objects.all(), required=False)
    kind = forms.ChoiceField(choices=[("", "Any kind"), *TX_KIND_CHOICES], required=False)
    date_from = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"})
    )


class ImportForm(forms.Form):
    file = forms.FileField(label="CSV file", help_text="See the CSV format documentation.")
