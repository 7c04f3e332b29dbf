"""The embedded demo: no debug pages, and a newcomer can find the admin."""

import subprocess
import sys

import pytest
from django.test import Client
from django.urls import reverse

from portfolio.demo import DEMO_PASSWORD, DEMO_USERNAME, demo_seed
from tests.conftest import ROOT


def test_the_embedded_default_runs_without_debug_pages():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; from django.conf import settings; django.setup(); "
            "print(settings.EMBEDDED, settings.DEBUG)",
        ],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "portfolio.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


@pytest.mark.django_db
def test_the_demo_login_opens_the_admin():
    demo_seed()
    client = Client()
    response = client.post(reverse("login"), {"username": DEMO_USERNAME, "password": DEMO_PASSWORD})
    assert response.status_code == 302, response.content
    assert client.get(reverse("admin:index")).status_code == 200


@pytest.mark.django_db
def test_the_embedded_login_page_says_the_demo_login_and_where_the_admin_is(settings):
    demo_seed()
    settings.EMBEDDED = True
    html = Client().get(reverse("login")).content.decode()
    assert 'id="demo-login"' in html
    assert f"<strong>{DEMO_USERNAME}</strong> / <strong>{DEMO_PASSWORD}</strong>" in html
    assert f'href="{reverse("admin:index")}"' in html


@pytest.mark.django_db
def test_the_real_stacks_login_page_never_shows_a_demo_login(settings):
    demo_seed()
    settings.EMBEDDED = False
    html = Client().get(reverse("login")).content.decode()
    assert "demo-login" not in html and "Demo: log in as" not in html
