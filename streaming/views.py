"""Pages of the API: the user's tokens, and the AsyncAPI document (public)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from streaming import tokens
from streaming.models import ApiToken

ASYNCAPI_DOCUMENT = settings.BASE_DIR / "docs" / "asyncapi.yaml"


# The new token waits in the session for the one page view after the redirect, then is gone.
NEW_TOKEN_KEY = "api_token_created"


@require_http_methods(["GET", "POST"])
def token_list(request: HttpRequest) -> HttpResponse:
    """List the user's tokens; POST creates one, shown once on the page it redirects to."""
    error = None
    name = ""
    if request.method == "POST":
        name = request.POST.get("name", "")
        if len(name.strip()) > ApiToken._meta.get_field("name").max_length:
            error = "name: at most 80 characters"
        else:
            try:
                token, secret = tokens.token_create(user=request.user, name=name)
            except ValueError as exc:
                error = str(exc)
            else:
                # Post/redirect/get: a reload must neither resubmit nor show the token again.
                request.session[NEW_TOKEN_KEY] = {"name": token.name, "secret": secret}
                return redirect("api-tokens")
    context = {
        "tokens": tokens.tokens_for_user(user=request.user),
        "created": request.session.pop(NEW_TOKEN_KEY, None) if not error else None,
        "error": error,
        "name": name,
        "api_url": f"{'wss' if request.is_secure() else 'ws'}://{request.get_host()}/ws/v1/",
    }
    response = render(request, "streaming/tokens.html", context, status=400 if error else 200)
    response["Cache-Control"] = "no-store"  # the page may hold a new token
    return response


@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    tokens.token_revoke(token=token)
    messages.success(request, f"Revoked “{token.name}”. It no longer opens connections.")
    return redirect("api-tokens")


@login_not_required
@require_GET
def asyncapi_document(request: HttpRequest) -> FileResponse:
    """docs/asyncapi.yaml, the API's machine-readable description."""
    return FileResponse(ASYNCAPI_DOCUMENT.open("rb"), content_type="application/yaml")
