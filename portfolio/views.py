"""Pages. Views adapt HTTP to services and selectors; every object id is checked for ownership
(another user's object is a 404, as if it did not exist)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, time, timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from portfolio import ledger, performance, services
from portfolio.forms import (
    ImportForm,
    PortfolioForm,
    PortfolioSettingsForm,
    TransactionFilterForm,
    TransactionForm,
)
from portfolio.importers import transactions_csv
from portfolio.models import Instrument, Portfolio, Transaction
from portfolio.selectors import ledger_reads, market_state, past_values, snapshot_history

TX_FIELDS = TransactionForm.Meta.fields


class LoginView(auth_views.LoginView):
    """The login page; on the embedded demo it also says the demo login, which opens the admin."""

    redirect_authenticated_user = True

    def get_context_data(self, **kwargs):
        from portfolio.demo import DEMO_PASSWORD, DEMO_USERNAME

        context = super().get_context_data(**kwargs)
        if settings.EMBEDDED and get_user_model().objects.filter(username=DEMO_USERNAME).exists():
            context["demo_login"] = {
                "username": DEMO_USERNAME,
                "password": DEMO_PASSWORD,
                "admin_url": reverse("admin:index"),
            }
        return context


def _own_portfolio(request: HttpRequest, portfolio_id: int) -> Portfolio:
    return get_object_or_404(Portfolio, pk=portfolio_id, owner=request.user)


def _own_transaction(request: HttpRequest, portfolio: Portfolio, tx_id: int) -> Transaction:
    return get_object_or_404(
        Transaction.objects.select_related("instrument"),
        pk=tx_id,
        portfolio=portfolio,
        portfolio__owner=request.user,
    )


# Pages the portfolio switcher keeps you on when you pick another portfolio.
SWITCHABLE = {
    "portfolio",
    "transactions",
    "transaction-add",
    "transaction-import",
    "performance",
    "portfolio-settings",
}


def _page(request: HttpRequest, template: str, portfolio: Portfolio | None, **context):
    match = request.resolver_match
    view = match.url_name if match and match.url_name in SWITCHABLE else "portfolio"
    portfolios = Portfolio.objects.filter(owner=request.user).order_by("name")
    return render(
        request,
        template,
        {
            "portfolio": portfolio,
            "portfolios": [(p, reverse(view, args=[p.id])) for p in portfolios],
            **context,
        },
    )


def home(request: HttpRequest) -> HttpResponse:
    """The live page of the user's first portfolio (by name)."""
    return _live_page(
        request, Portfolio.objects.filter(owner=request.user).order_by("name").first()
    )


def portfolio_detail(request: HttpRequest, portfolio_id: int) -> HttpResponse:
    """The live portfolio page. The table is drawn from the WebSocket snapshot, then kept live."""
    return _live_page(request, _own_portfolio(request, portfolio_id))


def _live_page(request: HttpRequest, portfolio: Portfolio | None) -> HttpResponse:
    # The return strip: TWR and IRR over the presets and a chosen ?from=&to= range, from the
    # ledger and the daily price history; drawn with the page, not streamed.
    strip: dict = {"returns": [], "problem": None, "start": "", "end": ""}
    if portfolio is not None:
        custom = None
        raw = {name: request.GET.get(name, "").strip() for name in ("from", "to")}
        if raw["from"] or raw["to"]:
            try:
                custom = (_day_param(raw["from"], "from"), _day_param(raw["to"], "to"))
            except ValueError as exc:
                strip["problem"] = str(exc)
            strip.update(start=raw["from"], end=raw["to"])
        strip["returns"] = past_values.period_returns(portfolio=portfolio, custom=custom)
    return _page(
        request,
        "portfolio/home.html",
        portfolio,
        stale_after=settings.LIVEFOLIO_STALE_SECONDS,
        heartbeat=settings.LIVEFOLIO_PAGE_PING_SECONDS,
        strip=strip,
        returns_known=any(r.returns for r in strip["returns"]),
    )


def _day_param(raw: str, name: str):
    """A ``YYYY-MM-DD`` query parameter as a date; ValueError naming ``name`` otherwise."""
    try:
        return datetime.strptime(raw, "%Y-%m-%d").date()
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not a date like 2026-03-01") from None


@require_http_methods(["GET", "POST"])
def portfolio_create(request: HttpRequest) -> HttpResponse:
    form = PortfolioForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            portfolio = services.portfolio_create(owner=request.user, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Created {portfolio.name}.")
            return redirect("portfolio", portfolio_id=portfolio.id)
    return _page(request, "portfolio/portfolio_form.html", None, form=form)


@require_http_methods(["GET", "POST"])
def portfolio_settings(request: HttpRequest, portfolio_id: int) -> HttpResponse:
    portfolio = _own_portfolio(request, portfolio_id)
    form = PortfolioSettingsForm(
        request.POST or None,
        instance=Portfolio(
            name=portfolio.name,
            cost_basis_method=portfolio.cost_basis_method,
            allow_short=portfolio.allow_short,
        ),
    )
    if request.method == "POST" and form.is_valid():
        try:
            services.portfolio_update(portfolio=portfolio, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Settings saved; holdings recomputed.")
            return redirect("portfolio", portfolio_id=portfolio.id)
    return _page(request, "portfolio/portfolio_form.html", portfolio, form=form)


def transaction_list(request: HttpRequest, portfolio_id: int) -> HttpResponse:
    portfolio = _own_portfolio(request, portfolio_id)
    rows = Transaction.objects.filter(portfolio=portfolio).select_related("instrument")
    filters = TransactionFilterForm(request.GET or None)
    if filters.is_valid():
        data = filters.cleaned_data
        if data["instrument"]:
            rows = rows.filter(instrument=data["instrument"])
        if data["kind"]:
            rows = rows.filter(kind=data["kind"])
        if data["date_from"]:
            rows = rows.filter(executed_at__gte=datetime.combine(data["date_from"], time(0), UTC))
        if data["date_to"]:
            end = datetime.combine(data["date_to"], time(0), UTC) + timedelta(days=1)
            rows = rows.filter(executed_at__lt=end)
    page = Paginator(rows.order_by("-executed_at", "-id"), 100).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    realized = ledger_reads.realizations(portfolio=portfolio)
    for tx in page:
        tx.realization = realized.get(tx.id)
    return _page(
        request,
        "portfolio/transactions.html",
        portfolio,
        filters=filters,
        page=page,
        query=query.urlencode(),
    )


@require_http_methods(["GET", "POST"])
def transaction_add(request: HttpRequest, portfolio_id: int) -> HttpResponse:
    portfolio = _own_portfolio(request, portfolio_id)
    form = TransactionForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.transaction_add(
                portfolio=portfolio, **{k: form.cleaned_data[k] for k in TX_FIELDS}
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Transaction added; holdings recomputed.")
            return redirect("transactions", portfolio_id=portfolio.id)
    return _page(request, "portfolio/transaction_form.html", portfolio, form=form)


@require_http_methods(["GET", "POST"])
def transaction_edit(request: HttpRequest, portfolio_id: int, tx_id: int) -> HttpResponse:
    portfolio = _own_portfolio(request, portfolio_id)
    tx = _own_transaction(request, portfolio, tx_id)
    form = TransactionForm(request.POST or None, instance=tx)
    if request.method == "POST" and form.is_valid():
        try:
            services.transaction_update(
                tx=_own_transaction(request, portfolio, tx_id),
                **{k: form.cleaned_data[k] for k in TX_FIELDS},
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Transaction saved; holdings recomputed.")
            return redirect("transactions", portfolio_id=portfolio.id)
    return _page(request, "portfolio/transaction_form.html", portfolio, form=form, tx=tx)


@require_POST
def transaction_delete(request: HttpRequest, portfolio_id: int, tx_id: int) -> HttpResponse:
    portfolio = _own_portfolio(request, portfolio_id)
    tx = _own_transaction(request, portfolio, tx_id)
    try:
        services.transaction_delete(tx=tx)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, "Transaction deleted; holdings recomputed.")
    return redirect("transactions", portfolio_id=portfolio.id)


@require_http_methods(["GET", "POST"])
def transaction_import(request: HttpRequest, portfolio_id: int) -> HttpResponse:
    portfolio = _own_portfolio(request, portfolio_id)
    form = ImportForm(request.POST or None, request.FILES or None)
    result = None
    if request.method == "POST" and form.is_valid():
        raw = form.cleaned_data["file"].read()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            form.add_error("file", "The file is not UTF-8 text.")
        else:
            result = transactions_csv.import_csv(
                portfolio=portfolio, text=io.StringIO(text, newline="")
            )
            if result.ok:
                messages.success(request, f"Imported {result.imported} transactions.")
                return redirect("transactions", portfolio_id=portfolio.id)
    return _page(request, "portfolio/import.html", portfolio, form=form, result=result)


def transaction_export(request: HttpRequest, portfolio_id: int) -> HttpResponse:
    portfolio = _own_portfolio(request, portfolio_id)
    response = HttpResponse(
        transactions_csv.export_csv(portfolio=portfolio), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = (
        f'attachment; filename="livefolio-{portfolio.id}-transactions.csv"'
    )
    return response


def portfolio_performance(request: HttpRequest, portfolio_id: int) -> HttpResponse:
    portfolio = _own_portfolio(request, portfolio_id)
    return _page(
        request,
        "portfolio/performance.html",
        portfolio,
        periods=snapshot_history.portfolio_performance(portfolio=portfolio),
        history=_returns_from_history(request, portfolio),
    )


def _returns_from_history(request: HttpRequest, portfolio: Portfolio) -> dict:
    """Returns over ``?from=YYYY-MM-DD&to=YYYY-MM-DD`` (UTC days) from the ledger and price
    history; by default from the day before the first transaction to today."""
    first = (
        Transaction.objects.filter(portfolio=portfolio)
        .order_by("executed_at")
        .values_list("executed_at", flat=True)
        .first()
    )
    today = datetime.now(UTC).date()
    found: dict = {"problem": None, "returns": None, "values": []}
    if first is None:
        found["problem"] = "no transactions yet"
        return found
    dates = {}
    before_first = first.astimezone(UTC).date() - timedelta(days=1)
    for name, default in (("from", before_first), ("to", today)):
        raw = request.GET.get(name, "").strip()
        try:
            dates[name] = datetime.strptime(raw, "%Y-%m-%d").date() if raw else default
        except ValueError:
            found["problem"] = f"{name}: {raw!r} is not a date like 2026-03-01"
            return found
    found.update(start=dates["from"], end=dates["to"])
    if dates["to"] > today:
        found["problem"] = f"to: {dates['to']} is in the future"
        return found
    try:
        found["returns"], found["values"] = past_values.portfolio_returns(
            portfolio=portfolio, start=dates["from"], end=dates["to"]
        )
    except (performance.PerformanceError, ledger.LedgerError) as exc:
        found["problem"] = str(exc)
    found["carried_days"] = sum(1 for v in found["values"] if v.carried)
    found["missing_days"] = sum(1 for v in found["values"] if v.missing)
    return found


@require_http_methods(["GET"])
def portfolio_history(request: HttpRequest, portfolio_id: int) -> JsonResponse:
    """The value chart's series: ``?range=1D|1W|1M|YTD|1Y|MAX`` (default 1D; case-insensitive)
    as ``{"points": [{"at", "value"}], "source": ...}``: 1D from the minute snapshots, the
    longer ranges daily from the ledger and the price history (:func:`past_values.value_series`).
    Another user's portfolio is a 404, a bad range a 400."""
    portfolio = _own_portfolio(request, portfolio_id)
    wanted = request.GET.get("range", performance.Period.DAY.value)
    try:
        period = performance.Period(wanted.upper())
    except ValueError:
        choices = ", ".join(p.value for p in performance.Period)
        return JsonResponse(
            {"error": f"range must be one of {choices}, got {wanted!r}", "field": "range"},
            status=400,
        )
    return JsonResponse(past_values.value_series(portfolio=portfolio, period=period))


def instrument(request: HttpRequest, symbol: str) -> HttpResponse:
    """The instrument page: live candles, 24 h stats, trade tape and book, the user's position."""
    instrument = get_object_or_404(Instrument, symbol=symbol)
    return render(
        request,
        "portfolio/instrument.html",
        {"instrument": instrument, "heartbeat": settings.LIVEFOLIO_PAGE_PING_SECONDS},
    )


@staff_member_required
def feed_status(request: HttpRequest) -> HttpResponse:
    """For staff: each feed's health and each instrument's price age."""
    return render(request, "portfolio/feed_status.html", market_state.feed_health())
