"""static/vendor/ holds npm packages' built files unchanged, at package-lock.json's versions, with
their licences (static/vendor/README.md). Run after ``npm ci`` (as .ci/run does)."""

import json

import pytest

from tests.conftest import ROOT

VENDORED = {
    # package: {file under static/vendor/<package>/: file in the installed package}
    "lightweight-charts": {
        "lightweight-charts.standalone.production.mjs": (
            "dist/lightweight-charts.standalone.production.mjs"
        ),
        "LICENSE": "LICENSE",
    },
}


@pytest.mark.parametrize("package", sorted(VENDORED))
def test_vendored_files_equal_the_locked_packages_files(package):
    locked = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    installed = ROOT / "node_modules" / package
    assert installed.is_dir(), f"node_modules/{package} is missing: run npm ci"
    version = json.loads((installed / "package.json").read_text())["version"]
    assert version == locked[f"node_modules/{package}"]["version"]
    # package.json pins the exact version, so the vendored copy cannot drift from a range.
    assert json.loads((ROOT / "package.json").read_text())["dependencies"][package] == version
    vendored = ROOT / "static" / "vendor" / package
    assert sorted(p.name for p in vendored.iterdir()) == sorted(VENDORED[package])
    for ours, theirs in VENDORED[package].items():
        assert (vendored / ours).read_bytes() == (installed / theirs).read_bytes(), (
            f"static/vendor/{package}/{ours} differs from {package}@{version}'s {theirs}"
        )
