"""API tokens: how bots and dashboards authenticate on the WebSocket API (/ws/v1/)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class ApiToken(models.Model):
    """A named, revocable token. Only a hash of its secret is stored; the full token
    (``lf_<prefix>_<secret>``) is shown once, when it is created (see streaming/tokens.py)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=80, help_text="What uses it, e.g. 'rebalancing bot'.")
    prefix = models.CharField(
        max_length=16, unique=True, editable=False, help_text="Public part, for lookup."
    )
    secret_hash = models.CharField(max_length=64, editable=False, help_text="sha256 hex.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["user_id", "-created_at"]
        verbose_name = "API token"
        constraints = [
            models.UniqueConstraint(
                fields=["user", "name"],
                condition=Q(revoked_at__isnull=True),
                name="apitoken_unique_active_name_per_user",
                violation_error_message="This user already has an active token with this name.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} (lf_{self.prefix}_…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class Deployment(models.Model):
    """The one row that names this deployment: created by the first ``migrate``, so every
    process on this database shares it and a deployment on another database has its own. The
    Redis namespace is derived from it (streaming/namespace.py)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    uid = models.UUIDField(unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="deployment_is_one_row")]

    def __str__(self) -> str:
        return str(self.uid)
