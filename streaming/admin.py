from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest

from streaming import tokens
from streaming.models import ApiToken


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ("user", "name")

    def clean(self):
        data = super().clean()
        user, name = data.get("user"), (data.get("name") or "").strip()
        if self.instance.pk is None and user and name:
            if ApiToken.objects.filter(user=user, name=name, revoked_at__isnull=True).exists():
                self.add_error("name", "This user already has an active token with this name.")
        return data


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Operators see, create and revoke tokens; the full token is shown once, on creation."""

    form = ApiTokenForm

    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("name", "prefix", "user__username")
    list_select_related = ("user",)
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    autocomplete_fields = ("user",)
    actions = ["revoke"]

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None):
        return ("user", "name") if obj is None else ("user", "name", *self.readonly_fields)

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None):
        # A token is not edited: it is created, then revoked (the action).
        return self.readonly_fields if obj is None else ("user", "name", *self.readonly_fields)

    def save_model(self, request: HttpRequest, obj: ApiToken, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        token, secret = tokens.token_create(user=obj.user, name=obj.name)
        obj.pk = token.pk
        obj.refresh_from_db()
        messages.warning(
            request, f"Token for {obj.user}: {secret} — copy it now, it is not shown again."
        )

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset) -> None:
        for token in queryset:
            tokens.token_revoke(token=token)
        self.message_user(request, f"Revoked {queryset.count()} token(s).")
