"""A nesting limit for request JSON, checked right after decoding and before anything recursive.

Real CDS Hooks bodies are about 15 levels deep (request -> prefetch -> Bundle -> entry ->
resource -> extension ...). orjson accepts up to 1024 levels, deep enough to exhaust Python's
recursion limit in the validation and copying that follow; the bound here keeps them far from it
while leaving room for extension-heavy resources.
"""

from __future__ import annotations

MAX_JSON_DEPTH = 128


def nesting_exceeds(value: object, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if objects/arrays nest deeper than `limit`. Iterative, and stops at the first one."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[dict | list, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False
