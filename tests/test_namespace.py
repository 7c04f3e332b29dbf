"""The Redis namespace: derived from the deployment's database and Redis database unless set on
purpose; what makes a configuration ambiguous. The end-to-end proof with two real stacks on one
Redis server is tests/faults/test_shared_redis.py."""

import subprocess
import sys

import pytest
from django.db import connection

from streaming import namespace
from streaming.models import Deployment
from streaming.namespace import Announcement
from tests.conftest import ROOT


@pytest.mark.unit
def test_the_prefix_differs_by_redis_database_and_by_database_identity():
    a = namespace.derived_prefix("postgresql:1:livefolio:uid-1", 7)
    assert a == namespace.derived_prefix("postgresql:1:livefolio:uid-1", 7)
    assert a != namespace.derived_prefix("postgresql:1:livefolio:uid-1", 8)
    assert a != namespace.derived_prefix("postgresql:1:livefolio_b:uid-1", 7)
    assert a != namespace.derived_prefix("postgresql:2:livefolio:uid-1", 7)
    assert a != namespace.derived_prefix("postgresql:1:livefolio:uid-2", 7)
    assert a.startswith("livefolio-")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "db"),
    [
        ("redis://127.0.0.1:6379/7", 7),
        ("redis://127.0.0.1:6379", 0),
        ("redis://:secret@redis.internal:6380/12", 12),
        ("redis://127.0.0.1:6379?db=3", 3),
        ("rediss://cache.example:6380/5", 5),
    ],
)
def test_the_redis_database_is_read_from_the_url(url, db):
    assert namespace.redis_db(url) == db


@pytest.mark.django_db
def test_the_database_identity_is_this_databases_row_cluster_and_name():
    identity = namespace.database_identity()
    assert identity == namespace.database_identity()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT system_identifier::text, current_database() FROM pg_control_system()"
        )
        system_identifier, name = cursor.fetchone()
    deployment = Deployment.objects.get()
    assert identity == f"postgresql:{system_identifier}:{name}:{deployment.uid}"


@pytest.mark.django_db
def test_migrate_gives_each_database_one_deployment_row():
    assert Deployment.objects.count() == 1
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        Deployment.objects.create(id=2, uid="7d8f6c1e-4b8e-4c1f-9a52-0d5e2b1c3a4f")


@pytest.mark.unit
def test_announcements_round_trip_and_foreign_channels_are_ignored():
    mine = Announcement(7, "0123456789abcdef", "livefolio-abc:with:colons")
    assert Announcement.parse(mine.channel) == mine
    assert Announcement.parse("livefolio:deployment:x:fp:prefix") is None
    assert Announcement.parse("other:livefolio:deployment:7:fp:prefix") is None
    assert Announcement.parse("livefolio:deployment:7:fp") is None


@pytest.mark.unit
def test_another_deployment_with_the_same_prefix_or_redis_database_conflicts():
    mine = Announcement(7, "aaaa", "shared")
    same_site = Announcement(7, "aaaa", "shared")
    other_prefix = Announcement(8, "bbbb", "shared")
    other_db = Announcement(7, "bbbb", "livefolio-other")
    elsewhere = Announcement(9, "cccc", "livefolio-elsewhere")
    assert namespace.conflicts(mine, [same_site, elsewhere]) == []
    (prefix_problem,) = namespace.conflicts(mine, [other_prefix])
    assert "LIVEFOLIO_REDIS_PREFIX='shared' is in use" in prefix_problem
    (db_problem,) = namespace.conflicts(mine, [other_db])
    assert "REDIS_URL database 7 is in use by another deployment" in db_problem


def test_the_old_variable_name_stops_start_up_naming_the_new_one():
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "DJANGO_SETTINGS_MODULE": "portfolio.settings",
            "LIVEFOLIO_CHANNEL_PREFIX": "mine",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "LIVEFOLIO_CHANNEL_PREFIX is now LIVEFOLIO_REDIS_PREFIX" in result.stderr


def test_the_embedded_default_claims_nothing(settings):
    settings.REDIS_URL = ""
    assert namespace.claim() == ""
