"""The shape of the package stays true: imports run one way, and the clinical core needs
neither Flask nor a database nor the network (population screening imports it alone)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "cds_service"
# What each subpackage may import of the others (errors.py is shared by all). bootstrap.py and
# cli.py, the wiring point and the command, may import anything.
ALLOWED = {
    "knowledge": set(),
    "clinical": {"knowledge", "fhir.read", "fhir.dates", "fhir.nesting"},
    "fhir": {"knowledge", "ops"},
    "cards": {"clinical", "knowledge", "fhir"},
    "cdshooks": {"clinical", "knowledge", "fhir", "cards"},
    # Screening runs the hooks' record builder and assessment, and words actions as cards do.
    "screening": {"clinical", "knowledge", "fhir", "cards"},
    "store": set(),
    "auth": {"store", "ops"},
    "ops": set(),
    "web": {"cdshooks", "fhir", "cards", "ops", "knowledge"},
    "feedback": {"store", "cards", "cdshooks", "web", "ops", "knowledge"},
}
# Third-party packages the pure core must never need.
NOT_IN_THE_CORE = {"flask", "werkzeug", "flask_cors", "sqlalchemy", "alembic", "psycopg",
                   "requests", "urllib3", "granian", "gunicorn", "h11", "prometheus_client", "jwt",
                   "matplotlib"}
CORE = ("knowledge", "clinical")
# Population screening runs on Dask workers: the web service, its stores and its network clients
# stay out of it (matplotlib only in its report module, imported when a report is asked for).
NOT_IN_SCREENING = NOT_IN_THE_CORE - {"matplotlib"}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        dotted = path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".")
        found[dotted.removesuffix(".__init__")] = path
    return found


def imports_of(path: Path) -> set[str]:
    """Every module named by an import statement, anywhere in the file (function bodies too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; name the module absolutely")
    return names


def package_of(module: str) -> str:
    return module.split(".")[0]


def allowed(source: str, target: str) -> bool:
    """May module `source` (e.g. clinical.assessment) import `target` (e.g. fhir.read)?"""
    home, there = package_of(source), package_of(target)
    if home in ("bootstrap", "cli") or home == there or there == "errors":
        return True
    if home not in ALLOWED:
        return False
    return any(target == rule or target.startswith(rule + ".") or there == rule
               for rule in ALLOWED[home])


def test_every_subpackage_is_in_the_rules():
    packages = {package_of(m) for m in modules()} - {"bootstrap", "cli", "errors", ""}
    assert packages <= set(ALLOWED), packages - set(ALLOWED)


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_run_one_way(module):
    path = modules()[module]
    ours = {name.removeprefix("cds_service.") for name in imports_of(path)
            if name.startswith("cds_service.")}
    # `from cds_service.x import y` names both x and x.y: judge the module, not its members.
    known = modules()
    targets = {name for name in ours if name in known} or set()
    targets |= {name.rsplit(".", 1)[0] for name in ours if name not in known}
    wrong = sorted(t for t in targets if t and not allowed(module, t))
    assert not wrong, f"{module} may not import {wrong}"


@pytest.mark.parametrize("module", sorted(m for m in modules() if package_of(m) in CORE))
def test_the_clinical_core_imports_no_web_store_or_network(module):
    third_party = {name.split(".")[0] for name in imports_of(modules()[module])}
    assert not third_party & NOT_IN_THE_CORE, third_party & NOT_IN_THE_CORE


def test_only_the_wiring_point_builds_the_web_app():
    users = sorted(m for m, path in modules().items()
                   if "cds_service.web.app" in imports_of(path) and m != "bootstrap")
    assert users == [], users


def test_the_clinical_core_imports_alone_without_flask(tmp_path):
    """In a fresh interpreter, importing the core loads neither Flask nor SQLAlchemy."""
    import subprocess
    import sys

    code = ("import sys; import cds_service.clinical, cds_service.knowledge; "
            "print(sorted(m for m in ('flask', 'sqlalchemy', 'requests', 'granian') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, check=True, env={"PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize("module", sorted(m for m in modules() if package_of(m) == "screening"))
def test_screening_imports_no_web_store_or_network(module):
    third_party = {name.split(".")[0] for name in imports_of(modules()[module])}
    assert not third_party & NOT_IN_SCREENING, third_party & NOT_IN_SCREENING
    if module != "screening.report":
        assert "matplotlib" not in third_party


def test_screening_imports_without_flask_or_matplotlib(tmp_path):
    """A Dask worker importing the screen loads neither Flask nor SQLAlchemy nor matplotlib."""
    import subprocess
    import sys

    code = ("import sys; import cds_service.screening, cds_service.screening.engine; "
            "print(sorted(m for m in ('flask', 'sqlalchemy', 'requests', 'granian', "
            "'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, check=True, env={"PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "[]", done.stdout
