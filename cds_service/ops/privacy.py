"""Identifiers as they may appear in logs: keyed hashes, never the values themselves."""

from __future__ import annotations

import hashlib
import hmac


def pseudonym(value: str | None, key: bytes) -> str:
    """A short keyed hash: the same patient gives the same tag within one deployment."""
    if not value:
        return "-"
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:16]
