"""Card uuids that prove this service issued them, so feedback never waits for the record.

A card's uuid is an RFC 9562 version-8 UUID: 66 random bits, then 56 bits of an HMAC-SHA256
of those bits and the service id, under a key derived from the record key (the same on every
replica and across restarts). The feedback endpoint can then tell, without the record of the
card, that this service issued it: feedback that arrives before the record (queued in another
worker, a store outage, a worker killed before writing it) is accepted and reconciled when the
record comes (feedback/store.py), and `cds-service report` says how many were.

Cost: one HMAC per card (~2 us, bench/README.md). Forging an id means guessing 56 bits, from a
client that must also hold a trusted JWT. Collisions: ~1 in 10^4 after 10^8 cards of one
service; the record keeps the first (insert ignores duplicates).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterable


class CardIds:
    def __init__(self, record_key: bytes):
        # A key of its own, so that neither use of the record key can stand in for the other.
        self._key = hmac.new(record_key, b"cds-service card ids v1", hashlib.sha256).digest()

    def _tag(self, service_id: str, head: bytes) -> bytes:
        return hmac.new(self._key, service_id.encode() + b"\0" + head,
                        hashlib.sha256).digest()[:7]

    def mint(self, service_id: str) -> str:
        head = bytearray(secrets.token_bytes(9))
        head[6] = (head[6] & 0x0F) | 0x80  # version 8
        head[8] = (head[8] & 0x3F) | 0x80  # RFC 9562 variant
        return str(uuid.UUID(bytes=bytes(head) + self._tag(service_id, bytes(head))))

    def issued_by(self, card_uuid: str, service_id: str) -> bool:
        try:
            raw = uuid.UUID(card_uuid).bytes
        except ValueError:
            return False
        return hmac.compare_digest(raw[9:], self._tag(service_id, raw[:9]))

    def issuer(self, card_uuid: str, service_ids: Iterable[str]) -> str | None:
        """Which of these services minted the id, if any."""
        return next((s for s in service_ids if self.issued_by(card_uuid, s)), None)
