"""One place where a code's spelling is normalised before anything compares it.

Hospitals send the same code under several names of its code system (the canonical URI, an OID
URI, the URI of a claims export) and in several spellings (ICD-10-CM with or without its dot).
`CodeSystems` maps every spelling listed in knowledge.toml `[code_systems]` to the canonical URI
and code form, so conditions, procedures, medicines, labs, draft orders and value sets all meet
as the same (system, code) pair. A system it does not know is passed through unchanged: local
codes (Epic's and Oracle Health's) never match a standard code by their number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

CodeKey = tuple[str, str]  # (canonical system URI, canonical code)

# Distinct unknown system strings remembered per process: bounded, so hostile input cannot grow it.
_UNKNOWN_CACHE_LIMIT = 4096
# Codes seen recently, normalised once: a chart repeats the same few hundred codes.
_CANONICAL_CACHE = 32768


def system_key(uri: str) -> str:
    """How system URIs are compared: case, surrounding blanks and a trailing slash do not count."""
    return uri.strip().rstrip("/").lower()


@dataclass(frozen=True, slots=True)
class _Route:
    """Codes of an incoming system URI that belong to one known system (optionally by shape)."""

    system: str  # canonical URI
    codes: re.Pattern[str] | None  # None: every code


@dataclass(frozen=True, slots=True)
class _CodeFormat:
    uppercase: bool
    pattern: re.Pattern[str] | None
    replace: str


class CodeSystems:
    """Canonical (system, code) for any spelling the knowledge file lists."""

    def __init__(self, spec: dict[str, dict[str, Any]]):
        self.uri: dict[str, str] = {}  # short name -> canonical URI
        self._routes: dict[str, tuple[_Route, ...]] = {}
        self._formats: dict[str, _CodeFormat] = {}
        routes: dict[str, list[_Route]] = {}
        for short, entry in spec.items():
            uri = entry["uri"]
            self.uri[short] = uri
            for alias in [uri, *entry.get("aliases", ())]:
                routes.setdefault(system_key(alias), []).append(_Route(uri, None))
            for shared in entry.get("from_systems", ()):
                routes.setdefault(system_key(shared["uri"]), []).insert(
                    0, _Route(uri, re.compile(shared["codes"])))
            fmt = entry.get("code_format")
            if fmt:
                self._formats[uri] = _CodeFormat(
                    bool(fmt.get("uppercase")),
                    re.compile(fmt["pattern"]) if fmt.get("pattern") else None,
                    fmt.get("replace", ""))
        # A shape-restricted route first, then the system's own unrestricted route.
        self._routes = {k: tuple(sorted(v, key=lambda r: r.codes is None))
                        for k, v in routes.items()}
        self._unknown: set[str] = set()
        self.canonical = lru_cache(maxsize=_CANONICAL_CACHE)(self._canonical)

    def _canonical(self, system: str, code: str) -> CodeKey:
        """The canonical (system URI, code) of a coding; unknown systems pass through."""
        code = code.strip()
        if not system or system in self._unknown:
            return system, code
        routes = self._routes.get(system) or self._routes.get(system_key(system))
        if routes is None:
            if len(self._unknown) < _UNKNOWN_CACHE_LIMIT:
                self._unknown.add(system)
            return system, code
        for route in routes:
            formatted = self._format(route.system, code)
            if route.codes is None or route.codes.match(formatted):
                return route.system, formatted
        return system, code

    def _format(self, uri: str, code: str) -> str:
        fmt = self._formats.get(uri)
        if fmt is None:
            return code
        if fmt.uppercase:
            code = code.upper()
        if fmt.pattern is not None:
            code = fmt.pattern.sub(fmt.replace, code)
        return code
