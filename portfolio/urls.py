from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from portfolio import views
from streaming import views as streaming_views

urlpatterns = [
    path("", views.home, name="home"),
    path("i/<str:symbol>/", views.instrument, name="instrument"),
    path("status/feeds/", views.feed_status, name="feed-status"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("settings/tokens/", streaming_views.token_list, name="api-tokens"),
    path(
        "settings/tokens/<int:token_id>/revoke/",
        streaming_views.token_revoke,
        name="api-token-revoke",
    ),
    path("api/asyncapi.yaml", streaming_views.asyncapi_document, name="asyncapi"),
]
