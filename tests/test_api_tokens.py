"""API tokens: created (named, shown once), listed and revoked on /settings/tokens/ and in the
admin; alice, bob and charlie each see and revoke only their own."""

import re

import pytest
from django.test import Client

from streaming import tokens
from streaming.models import ApiToken

pytestmark = pytest.mark.django_db


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_creating_a_token_shows_it_once_and_it_authenticates(world):
    alice = world["users"]["alice"]
    client = logged_in(alice)
    response = client.post("/settings/tokens/", {"name": "rebalancer"}, follow=True)
    assert response.redirect_chain == [("/settings/tokens/", 302)]
    assert response["Cache-Control"] == "no-store"
    shown = re.search(r'<code id="new-token">(lf_[^<]+)</code>', response.content.decode())
    assert shown, response.content.decode()
    assert tokens.token_authenticate(shown.group(1)) == alice
    row = ApiToken.objects.get(user=alice)
    assert row.name == "rebalancer"
    assert shown.group(1).split("_", 2)[2] not in row.secret_hash  # only a hash is kept
    listing = client.get("/settings/tokens/").content.decode()
    assert "rebalancer" in listing and f"lf_{row.prefix}_…" in listing
    assert shown.group(1) not in listing  # never shown again


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "name: give the token a name"), ("x" * 81, "name: at most 80 characters")],
)
def test_a_bad_token_name_is_refused_naming_the_field(world, name, message):
    response = logged_in(world["users"]["alice"]).post("/settings/tokens/", {"name": name})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not ApiToken.objects.exists()


def test_two_active_tokens_may_not_share_a_name_but_a_revoked_name_is_free(world):
    alice = world["users"]["alice"]
    token, _ = tokens.token_create(user=alice, name="bot")
    with pytest.raises(ValueError, match="already have an active token named 'bot'"):
        tokens.token_create(user=alice, name="bot")
    tokens.token_revoke(token=token)
    tokens.token_create(user=alice, name="bot")
    assert ApiToken.objects.filter(user=alice, name="bot").count() == 2


def test_revoking_stops_the_token_and_only_the_owner_can_revoke(world):
    users = world["users"]
    token, raw = tokens.token_create(user=users["alice"], name="alices-trader")
    for outsider in ("bob", "charlie"):
        response = logged_in(users[outsider]).post(f"/settings/tokens/{token.id}/revoke/")
        assert response.status_code == 404
        assert (
            "alices-trader"
            not in logged_in(users[outsider]).get("/settings/tokens/").content.decode()
        )
    assert tokens.token_authenticate(raw) == users["alice"]
    response = logged_in(users["alice"]).post(f"/settings/tokens/{token.id}/revoke/", follow=True)
    assert "no longer opens connections" in response.content.decode()
    assert tokens.token_authenticate(raw) is None
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_the_token_page_needs_a_login(world):
    response = Client().get("/settings/tokens/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_an_operator_creates_a_token_in_the_admin_and_sees_it_once_then_revokes_it(world):
    from django.contrib.auth import get_user_model

    operator = get_user_model().objects.create_superuser("operator", "op@example.com", "x")
    client = logged_in(operator)
    response = client.post(
        "/admin/streaming/apitoken/add/",
        {"user": world["users"]["bob"].id, "name": "dashboard"},
        follow=True,
    )
    shown = re.search(r"(lf_[A-Za-z0-9_-]+)", response.content.decode())
    assert shown, response.content.decode()
    assert tokens.token_authenticate(shown.group(1)) == world["users"]["bob"]
    row = ApiToken.objects.get(name="dashboard")
    client.post(
        "/admin/streaming/apitoken/",
        {"action": "revoke", "_selected_action": [row.id]},
    )
    assert tokens.token_authenticate(shown.group(1)) is None
    assert (
        shown.group(1)
        not in client.get(f"/admin/streaming/apitoken/{row.id}/change/").content.decode()
    )


def test_the_admin_refuses_a_second_active_token_of_the_same_name_with_a_message(world):
    from django.contrib.auth import get_user_model

    tokens.token_create(user=world["users"]["bob"], name="dashboard")
    operator = get_user_model().objects.create_superuser("operator", "op@example.com", "x")
    response = logged_in(operator).post(
        "/admin/streaming/apitoken/add/", {"user": world["users"]["bob"].id, "name": "dashboard"}
    )
    assert response.status_code == 200
    assert "already has an active token with this name" in response.content.decode()
    assert ApiToken.objects.filter(name="dashboard").count() == 1
