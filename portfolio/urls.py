from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from portfolio import views
from streaming import health
from streaming import views as streaming_views

urlpatterns = [
    path("", views.home, name="home"),
    # <path:...>: a symbol may contain "/" (Kraken's BTC/USD), see models.instrument_symbol.
    path("i/<path:symbol>/", views.instrument, name="instrument"),
    path("status/feeds/", views.feed_status, name="feed-status"),
    path("portfolios/new/", views.portfolio_create, name="portfolio-create"),
    path("p/<int:portfolio_id>/", views.portfolio_detail, name="portfolio"),
    path("p/<int:portfolio_id>/history.json", views.portfolio_history, name="portfolio-history"),
    path("p/<int:portfolio_id>/settings/", views.portfolio_settings, name="portfolio-settings"),
    path("p/<int:portfolio_id>/performance/", views.portfolio_performance, name="performance"),
    path("p/<int:portfolio_id>/transactions/", views.transaction_list, name="transactions"),
    path("p/<int:portfolio_id>/transactions/add/", views.transaction_add, name="transaction-add"),
    path(
        "p/<int:portfolio_id>/transactions/<int:tx_id>/edit/",
        views.transaction_edit,
        name="transaction-edit",
    ),
    path(
        "p/<int:portfolio_id>/transactions/<int:tx_id>/delete/",
        views.transaction_delete,
        name="transaction-delete",
    ),
    path("p/<int:portfolio_id>/import/", views.transaction_import, name="transaction-import"),
    path("p/<int:portfolio_id>/export.csv", views.transaction_export, name="transaction-export"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("settings/tokens/", streaming_views.token_list, name="api-tokens"),
    path(
        "settings/tokens/<int:token_id>/revoke/",
        streaming_views.token_revoke,
        name="api-token-revoke",
    ),
    path("api/asyncapi.yaml", streaming_views.asyncapi_document, name="asyncapi"),
    path("healthz", health.healthz, name="healthz"),
    path("metrics", health.metrics, name="metrics"),
    path(settings.ADMIN_PATH, admin.site.urls),
]
