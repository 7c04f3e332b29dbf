"""Login lockout, production settings, CSP, the admin path, health and metrics endpoints."""

import http.cookiejar
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime

import pytest
from django.test import Client

from portfolio import services
from streaming import health
from streaming.feeds.base import FeedStats
from streaming.tasks import ingest_quotes
from tests.conftest import PASSWORD, ROOT

pytestmark = pytest.mark.django_db

PRODUCTION = {
    "DATABASE_URL": "postgres://livefolio:secret@db.internal:5432/livefolio",
    "REDIS_URL": "redis://redis.internal:6379/0",
    "DJANGO_SECRET_KEY": "prod-7Hq2-x9LmZ0pV4rT8wKc1bN6yJd3sF5gA2eR7uI0oP9lKj8hG6fD4sA1zXcVbN",
    "DJANGO_ALLOWED_HOSTS": "folio.example.com",
    "LIVEFOLIO_TLS": "True",
}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "portfolio.settings"} | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def probe(expression: str, env: dict[str, str]) -> object:
    code = (
        "import django, json; django.setup(); from django.conf import settings; "
        f"print(json.dumps({expression}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "portfolio.settings"} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def http_login(base_url: str, username: str, password: str) -> int:
    """Post the login form over HTTP with a fresh session; returns the response's status
    (302 logged in, 200 the form again, 429 locked out)."""
    jar = http.cookiejar.CookieJar()

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)
    form = opener.open(f"{base_url}/login/", timeout=20).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    data = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token}
    ).encode()
    try:
        return opener.open(f"{base_url}/login/", data=data, timeout=20).status
    except urllib.error.HTTPError as response:
        return response.code


def test_check_deploy_is_clean_on_production_settings():
    result = manage("check", "--deploy", "--fail-level", "DEBUG", env=PRODUCTION)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "System check identified no issues" in result.stdout


def test_check_deploy_flags_a_production_instance_served_without_tls():
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION | {"LIVEFOLIO_TLS": "False"}
    )
    assert result.returncode != 0
    assert "SESSION_COOKIE_SECURE" in result.stderr


def test_production_is_debug_off_with_secure_cookies_and_hsts():
    config = probe(
        "[settings.DEBUG, settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE, "
        "settings.SECURE_HSTS_SECONDS, settings.SECURE_SSL_REDIRECT]",
        PRODUCTION,
    )
    assert config == [False, True, True, 31_536_000, True]


def test_the_admin_lives_at_the_configured_path():
    path = probe(
        "__import__('django.urls').urls.reverse('admin:index')",
        PRODUCTION | {"LIVEFOLIO_ADMIN_PATH": "/ops-7f3q/"},
    )
    assert path == "/ops-7f3q/"


def test_passwords_are_hashed_with_argon2(world):
    assert world["users"]["alice"].password.startswith("argon2")


def test_repeated_failed_logins_lock_the_account_with_a_429_page(world, settings):
    settings.AXES_FAILURE_LIMIT = 3
    client = Client()
    for _ in range(2):
        response = client.post("/login/", {"username": "alice", "password": "wrong"})
        assert response.status_code == 200
        assert "correct username and password" in response.content.decode()
    locked = client.post("/login/", {"username": "alice", "password": "wrong"})
    assert locked.status_code == 429
    assert "Too many failed log-ins" in locked.content.decode()
    # Locked means locked: even the right password is refused until the cool-off ends.
    again = client.post("/login/", {"username": "alice", "password": PASSWORD})
    assert again.status_code == 429
    # The lock is on the address: alice logging in from elsewhere is not locked out.
    elsewhere = Client(REMOTE_ADDR="198.51.100.7")
    alice = elsewhere.post("/login/", {"username": "alice", "password": PASSWORD})
    assert alice.status_code == 302


def test_one_password_sprayed_over_many_usernames_from_one_address_is_locked_out(
    world, daphne_server
):
    """Through real daphne, as a password-spraying script would: each username fails once,
    the address is locked after LIVEFOLIO_LOGIN_FAILURE_LIMIT (5) failures in all."""
    statuses = [
        http_login(daphne_server, username, "Summer2026!")
        for username in ("alice", "bob", "charlie", "admin", "root", "dave", "erin")
    ]
    assert statuses == [200, 200, 200, 200, 429, 429, 429]
    # Every later try from that address is refused, even with a right password.
    assert http_login(daphne_server, "alice", PASSWORD) == 429


def test_pages_carry_a_csp_that_allows_only_own_scripts_and_websocket(world):
    client = Client()
    client.force_login(world["users"]["alice"])
    response = client.get("/")
    policy = dict(
        part.strip().split(" ", 1) for part in response["Content-Security-Policy"].split(";")
    )
    assert policy["script-src"] == "'self'"
    assert policy["connect-src"] == "'self' ws://testserver"
    assert policy["object-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert response["X-Frame-Options"] == "DENY"


def test_every_response_carries_a_request_id_and_keeps_a_proxys_id(world):
    client = Client()
    assert client.get("/login/")["X-Request-ID"].startswith("req-")
    given = client.get("/login/", headers={"X-Request-ID": "lb-42"})
    assert given["X-Request-ID"] == "lb-42"
    hostile = client.get("/login/", headers={"X-Request-ID": "x\r\ninjected: 1" + "a" * 100})
    assert hostile["X-Request-ID"].startswith("req-")


def test_outsiders_cannot_open_the_admin_page_of_someone_elses_portfolio(world):
    client = Client()
    client.force_login(world["users"]["bob"])  # not staff
    url = f"/admin/portfolio/portfolio/{world['portfolios']['alice'].id}/change/"
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.django_db(transaction=True)
def test_healthz_is_503_naming_what_fails_without_a_worker_or_prices(world, redis_client):
    response = Client().get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["redis"] == {"ok": True}
    assert body["checks"]["workers"] == {"ok": False, "alive": {}}
    assert body["checks"]["feeds"]["feeds"]["simulated"] == {
        "price_age": None,
        "stale": True,
        "process": "never reported",
        "state": None,
        "ok": False,
    }
    only = Client().get("/healthz?check=database&check=redis")
    assert only.status_code == 200
    assert Client().get("/healthz?check=disk").json() == {
        "error": "check: unknown disk; known: database, redis, workers, feeds"
    }


@pytest.mark.django_db(transaction=True)
def test_healthz_is_200_with_a_live_worker_a_live_feed_and_fresh_prices(world, celery_worker):
    stats = FeedStats(feed="simulated")
    stats.set_state("connected")
    services.feed_status_record(stats=stats.as_dict())  # the feed process's heartbeat
    ingest_quotes.delay(
        [
            {"instrument": i.id, "price": "10", "ts": datetime.now(UTC).isoformat()}
            | {"source": "simulated"}
            for i in (world["btc"], world["eth"])
        ]
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = Client().get("/healthz")
        if response.status_code == 200:
            break
        time.sleep(0.3)
    assert response.status_code == 200, response.content
    assert list(response.json()["checks"]["workers"]["alive"]) == [n for n in health.worker_ages()]


@pytest.mark.django_db(transaction=True)
def test_metrics_need_the_bearer_token_or_a_staff_session(world, redis_client, settings):
    settings.METRICS_TOKEN = "s3cret-token"
    assert Client().get("/metrics").status_code == 401
    wrong = Client().get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = Client().get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200
    text = ok.content.decode()
    for name in (
        "livefolio_ws_connections",
        "livefolio_ws_messages_sent_total",
        "livefolio_feed_price_age_seconds",
        "livefolio_ingest_lag_seconds",
    ):
        assert name in text
    assert "alice" not in text  # nothing about users or their portfolios
    outsider = Client()
    outsider.force_login(world["users"]["bob"])
    assert outsider.get("/metrics").status_code == 401
    world["users"]["charlie"].is_staff = True
    world["users"]["charlie"].save()
    staff = Client()
    staff.force_login(world["users"]["charlie"])
    assert staff.get("/metrics").status_code == 200
