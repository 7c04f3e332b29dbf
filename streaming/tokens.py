"""API tokens: create, revoke, authenticate. The full token is never stored nor logged.

A token reads ``lf_<prefix>_<secret>``: the prefix finds the row by index, the secret is checked
against its stored hash in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.db import transaction
from django.utils import timezone

from streaming import events
from streaming.models import ApiToken

TOKEN_START = "lf_"
PREFIX_BYTES = 6  # 8 url-safe characters: unique lookup key, not a secret
SECRET_BYTES = 32  # 256 bits of randomness


def _hash(secret: str) -> str:
    # sha256, not a slow password hash: the secret is 256 random bits, so guessing is hopeless
    # without key stretching, and a fast hash keeps every WebSocket connect cheap.
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def token_create(*, user, name: str) -> tuple[ApiToken, str]:
    """Create a named token for ``user``; returns it and the full token text (shown once)."""
    name = name.strip()
    if not name:
        raise ValueError("name: give the token a name")
    if ApiToken.objects.filter(user=user, name=name, revoked_at__isnull=True).exists():
        raise ValueError(f"name: you already have an active token named {name!r}")
    while True:
        prefix = secrets.token_urlsafe(PREFIX_BYTES)
        if "_" not in prefix and not ApiToken.objects.filter(prefix=prefix).exists():
            break
    secret = secrets.token_urlsafe(SECRET_BYTES)
    token = ApiToken.objects.create(user=user, name=name, prefix=prefix, secret_hash=_hash(secret))
    return token, f"{TOKEN_START}{prefix}_{secret}"


def token_revoke(*, token: ApiToken) -> ApiToken:
    """Revoke a token (idempotent): it stops authenticating at once, and the connections open
    with it are closed (after commit) wherever they are."""
    if token.revoked_at is None:
        ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        token.refresh_from_db(fields=["revoked_at"])
        user_id, token_id = token.user_id, token.pk
        transaction.on_commit(lambda: events.token_revoked(user_id=user_id, token_id=token_id))
    return token


def token_authenticate(raw: str):
    """The active user of a full token text, or None (unknown, malformed or revoked)."""
    token = token_lookup(raw)
    return token.user if token else None


def token_lookup(raw: str) -> ApiToken | None:
    """The active token (with its user) a full token text stands for, or None.

    Records ``last_used_at``. Never logs the token.
    """
    if not isinstance(raw, str) or not raw.startswith(TOKEN_START):
        return None
    prefix, sep, secret = raw[len(TOKEN_START) :].partition("_")
    if not sep or not prefix or not secret or len(prefix) > 16:
        return None
    if not prefix.isascii() or not prefix.replace("-", "").isalnum():
        return None  # not a prefix token_create makes (and PostgreSQL refuses NUL)
    token = (
        ApiToken.objects.select_related("user")
        .filter(prefix=prefix, revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None or not hmac.compare_digest(token.secret_hash, _hash(secret)):
        return None
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token


def tokens_for_user(*, user) -> list[ApiToken]:
    """A user's tokens, newest first, revoked ones included (shown as revoked)."""
    return list(ApiToken.objects.filter(user=user).order_by("-created_at"))
