"""A nesting limit for the FHIR resources the service reads, checked before anything recursive.

Real resources are under ~15 levels deep (resource -> extension -> extension -> value ...).
orjson accepts bodies up to 1024 levels, deep enough to exhaust Python's recursion limit in the
validation and copying that follow; the bound here keeps them far from it while leaving room for
extension-heavy resources. Only resources the rules use are checked (a few per request).
"""

from __future__ import annotations

from typing import Any

MAX_JSON_DEPTH = 64


def nesting_exceeds(value: object, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if objects/arrays nest deeper than `limit`. Iterative, and stops at the first one."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False
