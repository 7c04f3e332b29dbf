"""The README's configuration table lists every environment variable the code reads, and only
those: a variable added without a row (or a row left for a removed variable) fails here."""

import ast
import re

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

READERS = {"env_str", "env_bool", "env_int", "env_list", "env_url", "getenv", "get", "setdefault"}
# Read, but not configuration a person sets: Django's own module switch, and a retired name
# whose only read is the start-up error that names its successor.
NOT_CONFIGURATION = {"DJANGO_SETTINGS_MODULE", "LIVEFOLIO_CHANNEL_PREFIX"}


def variables_the_code_reads() -> set[str]:
    names = set()
    for path in [
        ROOT / "manage.py",
        *ROOT.glob("portfolio/**/*.py"),
        *ROOT.glob("streaming/**/*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                environ = isinstance(func, ast.Attribute) and "environ" in ast.unparse(func.value)
                if name.startswith("env_") or name == "getenv" or (environ and name in READERS):
                    first = node.args[0]
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        names.add(first.value)
            elif isinstance(node, ast.Subscript) and "environ" in ast.unparse(node.value):
                if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
                    names.add(node.slice.value)
    return {n for n in names if re.fullmatch(r"[A-Z][A-Z0-9_]+", n)} - NOT_CONFIGURATION


def variables_the_readme_documents() -> set[str]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| variable |") :]
    table = table[: table.index("\n\n")]
    names = set()
    for row in table.splitlines()[2:]:
        first_cell = row.split("|")[1]
        names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell))
    return names


def test_the_readme_lists_every_variable_the_code_reads():
    code, readme = variables_the_code_reads(), variables_the_readme_documents()
    assert len(code) > 30  # the scan finds the settings' reads
    assert code - readme == set(), "read by the code, missing from README's table"
    assert readme - code == set(), "in README's table, read by no code"
