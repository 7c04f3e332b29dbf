"""Configuration comes from the environment; bad values stop start-up naming the variable."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PROBE = (
    "import django, json; from django.conf import settings; django.setup(); "
    "print(json.dumps({'engine': settings.DATABASES['default']['ENGINE'], "
    "'layer': settings.CHANNEL_LAYERS['default']['BACKEND'], "
    "'eager': settings.CELERY_TASK_ALWAYS_EAGER, 'embedded': settings.EMBEDDED, "
    "'hosts': settings.CHANNEL_LAYERS['default'].get('CONFIG', {}).get('hosts'), "
    "'capacity': settings.CHANNEL_LAYERS['default'].get('CONFIG', {}).get('capacity')}))"
)


def run_with_env(env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "portfolio.settings"}
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_variables_gives_the_embedded_default():
    result = run_with_env({})
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config == {
        "engine": "django.db.backends.sqlite3",
        "layer": "channels.layers.InMemoryChannelLayer",
        "eager": True,
        "embedded": True,
        "hosts": None,
        "capacity": None,
    }


def test_database_and_redis_urls_give_the_real_stack():
    result = run_with_env(
        {
            "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/livefolio",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "DJANGO_SECRET_KEY": "x" * 50,
        }
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["engine"] == "django.db.backends.postgresql"
    # Livefolio's pub/sub layer
    assert config["layer"] == "streaming.patches.layers.PubSubChannelLayer"
    assert config["eager"] is False
    # The idle-consumer pitfall: no socket read timeout on the channel layer's connections.
    assert config["hosts"] == [{"address": "redis://127.0.0.1:6379/0", "socket_timeout": None}]
    assert config["capacity"] == 1000  # messages held per connection that is not reading


REAL_STACK = {
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/livefolio",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DJANGO_SECRET_KEY": "x" * 50,
}


def test_channel_layer_core_selects_channels_redis_core_layer_without_read_timeout():
    env = REAL_STACK | {"LIVEFOLIO_CHANNEL_LAYER": "core", "LIVEFOLIO_CHANNEL_CAPACITY": "50"}
    result = run_with_env(env)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["layer"] == "streaming.patches.layers.CoreChannelLayer"
    assert config["hosts"] == [{"address": "redis://127.0.0.1:6379/0", "socket_timeout": None}]
    assert config["capacity"] == 50


def test_unknown_channel_layer_names_the_variable():
    result = run_with_env(REAL_STACK | {"LIVEFOLIO_CHANNEL_LAYER": "rabbit"})
    assert result.returncode != 0
    assert "LIVEFOLIO_CHANNEL_LAYER: expected pubsub or core, got 'rabbit'" in result.stderr


def test_unsupported_database_url_names_the_variable():
    result = run_with_env({"DATABASE_URL": "mysql://root@localhost/x"})
    assert result.returncode != 0
    assert "DATABASE_URL: expected a URL starting with postgres://" in result.stderr


def test_redis_url_that_is_not_a_url_names_the_variable():
    result = run_with_env({"REDIS_URL": "localhost:6379", "DJANGO_SECRET_KEY": "x" * 50})
    assert result.returncode != 0
    assert "REDIS_URL: expected a URL starting with redis://" in result.stderr


def test_real_stack_without_a_secret_key_refuses_to_start():
    result = run_with_env({"REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY: required when REDIS_URL is set" in result.stderr


def test_a_boolean_that_is_not_true_or_false_names_the_variable():
    result = run_with_env({"DJANGO_DEBUG": "yes"})
    assert result.returncode != 0
    assert "DJANGO_DEBUG: expected True or False, got 'yes'" in result.stderr


def test_a_number_that_is_not_a_number_names_the_variable():
    result = run_with_env({"LIVEFOLIO_STALE_SECONDS": "fast"})
    assert result.returncode != 0
    assert "LIVEFOLIO_STALE_SECONDS: expected a whole number, got 'fast'" in result.stderr


@pytest.mark.parametrize(
    "name",
    [
        "LIVEFOLIO_COALESCE_MS",
        "LIVEFOLIO_VALUATION_MAX_DELAY_MS",
        "LIVEFOLIO_VALUATION_INTERVAL_MS",
    ],
)
def test_a_retired_flow_control_setting_still_set_stops_the_start_up(name):
    result = run_with_env({name: "100"})
    assert result.returncode != 0
    assert f"{name} is gone" in result.stderr


def test_a_visibility_timeout_a_running_ingest_task_could_outlive_is_refused():
    # An ingest task may be held 10 s (its retry countdown) and run 15 s (its hard time limit):
    # a shorter visibility timeout would hand a live worker's task to a second one.
    result = run_with_env({"LIVEFOLIO_BROKER_VISIBILITY_TIMEOUT": "2"})
    assert result.returncode != 0
    assert "LIVEFOLIO_BROKER_VISIBILITY_TIMEOUT: must be at least 26, got 2" in result.stderr
