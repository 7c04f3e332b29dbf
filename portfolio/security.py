"""HTTP hardening that Django 5.2 does not ship: a Content-Security-Policy, request ids in logs."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from contextvars import ContextVar

from django.http import HttpRequest, HttpResponse

# The request or WebSocket connection a log line belongs to ("-" outside of both).
context_id: ContextVar[str] = ContextVar("livefolio_context_id", default="-")

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def new_id(kind: str) -> str:
    """A short random id, e.g. ``req-3f2a9c1b7d4e`` or ``ws-...``."""
    return f"{kind}-{uuid.uuid4().hex[:12]}"


class ContextIdFilter(logging.Filter):
    """Adds ``context_id`` to every record so the one-line format can print it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.context_id = context_id.get()
        return True


class RequestIdMiddleware:
    """Tags the request with an id (a sane ``X-Request-ID`` from a proxy, or a new one), puts it
    in every log line of the request and returns it in the ``X-Request-ID`` response header."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.headers.get("X-Request-ID", "")
        request_id = given if _CLIENT_REQUEST_ID.match(given) else new_id("req")
        request.request_id = request_id
        token = context_id.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            context_id.reset(token)
        response["X-Request-ID"] = request_id
        return response


def content_security_policy(request: HttpRequest) -> str:
    """Exactly the app's own scripts, styles and images, and its own WebSocket; nothing inline,
    no plugins, no framing, forms only to itself."""
    scheme = "wss" if request.is_secure() else "ws"
    host = request.get_host()
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            # Scripts stay strictly our own files. Inline *styles* are allowed: the chart library
            # (lightweight-charts) sizes its canvases with style attributes, and a style cannot
            # run code.
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self'",
            f"connect-src 'self' {scheme}://{host}",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


class ContentSecurityPolicyMiddleware:
    """Sets ``Content-Security-Policy`` on every HTML response that has none."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = content_security_policy(request)
        return response
