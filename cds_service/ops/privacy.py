"""Identifiers as they may appear in logs: keyed hashes, never the values themselves."""

from __future__ import annotations

import hashlib
import hmac


def pseudonym(value: str | None, key: bytes) -> str:
    """A short keyed hash: the same patient gives the same tag within one deployment."""
    if not value:
        return "-"
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:16]


def keyed_digests(values: frozenset[str] | set[str], key: bytes) -> frozenset[str]:
    """Keyed hashes of a card's evidence keys (drug and band names): comparable as sets, and
    unreadable without the key."""
    return frozenset(hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:16]
                     for value in values)


def fingerprint(digests: frozenset[str]) -> str:
    """One digest of a set of keyed hashes: the same card content gives the same fingerprint."""
    return hashlib.sha256(" ".join(sorted(digests)).encode()).hexdigest()[:32]
