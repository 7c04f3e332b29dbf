from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from portfolio import views

urlpatterns = [
    path("", views.home, name="home"),
    path("i/<str:symbol>/", views.instrument, name="instrument"),
    path("status/feeds/", views.feed_status, name="feed-status"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
