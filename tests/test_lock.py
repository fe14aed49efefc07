"""The lock files agree with pyproject.toml, and the environment running the tests is the lock.

`make lock` writes requirements.lock (runtime + dev: make, CI) and requirements-runtime.lock (the
Docker image) from pyproject.toml. A dependency added or re-pinned there without `make lock`
fails here, naming the package.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

import pytest
from conftest import ROOT
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SELF = canonicalize_name(PROJECT["name"])
# `name==version ; marker \` opens each entry; hashes and `# via` comments follow it.
ENTRY = re.compile(r"^(?P<requirement>[A-Za-z0-9][^\s;\\]*==[^\s;\\]+)"
                   r"(?:\s*;\s*(?P<marker>[^\\]+?))?\s*\\?$")


def read_lock(name: str) -> dict[str, tuple[Requirement, str | None]]:
    entries: dict[str, tuple[Requirement, str | None]] = {}
    lines = (ROOT / name).read_text().splitlines()
    for number, line in enumerate(lines):
        match = ENTRY.match(line)
        if match:
            requirement = Requirement(match["requirement"])
            following = lines[number + 1] if number + 1 < len(lines) else ""
            assert following.strip().startswith("--hash=sha256:"), f"{name}: {line} has no hash"
            entries[canonicalize_name(requirement.name)] = (requirement, match["marker"])
    assert entries, f"{name} lists nothing"
    return entries


LOCK = read_lock("requirements.lock")
RUNTIME_LOCK = read_lock("requirements-runtime.lock")


def pinned(requirement: Requirement) -> str:
    [specifier] = requirement.specifier
    assert specifier.operator == "==", f"{requirement} is not pinned with =="
    return specifier.version


def declared(extras: bool) -> list[Requirement]:
    found = [Requirement(d) for d in PROJECT["dependencies"]]
    if extras:
        found += [Requirement(d) for group in PROJECT["optional-dependencies"].values()
                  for d in group]
    return [r for r in found if canonicalize_name(r.name) != SELF]  # dev pulls in [report]


@pytest.mark.parametrize(("lock_name", "lock", "extras"), [
    ("requirements.lock", LOCK, True), ("requirements-runtime.lock", RUNTIME_LOCK, False)])
def test_every_pin_of_pyproject_is_in_the_lock_at_the_same_version(lock_name, lock, extras):
    stale = []
    for requirement in declared(extras):
        name = canonicalize_name(requirement.name)
        locked = lock.get(name)
        if locked is None or pinned(locked[0]) != pinned(requirement):
            stale.append(f"{requirement} (lock: {locked[0] if locked else 'absent'})")
    assert not stale, f"run `make lock`: {lock_name} disagrees with pyproject.toml on {stale}"


def wanted_by(lock_name: str) -> dict[str, set[str]]:
    """Each locked package with what asked for it (uv's "# via" lines)."""
    found: dict[str, set[str]] = {}
    current = None
    for line in (ROOT / lock_name).read_text().splitlines():
        if line and not line[0].isspace() and "==" in line:
            current = canonicalize_name(line.split("==")[0].split("[")[0])
            found[current] = set()
        elif current and line.strip().startswith("#") and line.strip() != "# via":
            found[current].add(line.strip().lstrip("#").strip().removeprefix("via ").strip())
    return found


def test_the_runtime_lock_is_the_runtime_part_of_the_full_lock():
    for name, (requirement, _) in RUNTIME_LOCK.items():
        assert name in LOCK and str(LOCK[name][0]) == str(requirement), name
    dev_only = {canonicalize_name(r.name) for r in declared(True)} - {
        canonicalize_name(r.name) for r in declared(False)}
    # A dev tool may also be what a runtime package needs (pyyaml for dask): it is in the
    # image then only through that package, never because the project asked for it.
    asked_by = wanted_by("requirements-runtime.lock")
    in_image = dev_only & RUNTIME_LOCK.keys()
    assert dev_only and all(asked_by[name] and not any(
        who.startswith("cds-service") for who in asked_by[name]) for name in in_image), \
        f"dev/report packages in the image: {sorted(in_image)}"
    assert "matplotlib" not in RUNTIME_LOCK, "the service itself never draws a chart"


def test_the_environment_running_the_tests_is_the_lock():
    """make's venvs are installed from the lock: a package at another version means the venv
    is stale (make reinstalls when the lock changes) or something was installed by hand."""
    environment = default_environment()
    different = []
    for name, (requirement, marker) in LOCK.items():
        if marker and not Requirement(f"x ; {marker}").marker.evaluate(environment):
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "absent"
        if installed != pinned(requirement):
            different.append(f"{requirement} (installed: {installed})")
    assert not different, different
