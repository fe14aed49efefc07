"""Public keys of trusted clients: their JWK Sets, configured inline or fetched from their `jku`.

Keys are only ever fetched from the `jku` in the client's configuration, never from a URL a token
names. A fetched set is cached; an unknown `kid` triggers at most one refetch per cooldown, so a
stream of made-up `kid`s cannot turn the service into a traffic generator against the issuer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from cds_service.ops.config import TrustedClient

log = logging.getLogger("cds_service.auth.verifier")

FETCH_TIMEOUT_SECONDS = 2.0
MAX_JWKS_BYTES = 256 * 1024  # real sets hold a handful of keys: a few KB
# A cached set is refreshed after this long, so a key the issuer withdrew stops working.
MAX_AGE_SECONDS = 3600.0

# The key each algorithm needs: (kty, crv). Checked so a key is never used with another alg.
_KEY_SHAPES = {"ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"),
               "RS256": ("RSA", None), "RS384": ("RSA", None)}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class KeyNotFound(Exception):
    """No usable key for this kid and algorithm (reason is logged by the caller)."""


def find_key(jwks: object, kid: str, alg: str) -> dict | None:
    """The public JWK with this kid that fits the algorithm, or None."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        return None
    kty, crv = _KEY_SHAPES[alg]
    for jwk in keys:
        if (isinstance(jwk, dict) and jwk.get("kid") == kid and jwk.get("kty") == kty
                and (crv is None or jwk.get("crv") == crv)
                and jwk.get("alg", alg) == alg and jwk.get("use", "sig") == "sig"):
            # Operators may paste a key pair (the Sandbox publishes one): keep the public part.
            return {k: v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS}
    return None


@dataclass
class _Fetched:
    jwks: dict | None = None
    fetched_at: float = float("-inf")
    attempted_at: float = float("-inf")


class KeySets:
    """Looks up a client's signing key by kid: inline set first, then its configured jku."""

    def __init__(self, *, refetch_cooldown_seconds: float = 60.0,
                 timeout_seconds: float = FETCH_TIMEOUT_SECONDS,
                 monotonic: Callable[[], float] = time.monotonic,
                 session: requests.Session | None = None):
        self.cooldown = refetch_cooldown_seconds
        self.timeout = timeout_seconds
        self.monotonic = monotonic
        self.session = session or requests.Session()
        self.fetches = 0  # how many times a jku was requested (for tests and operators)
        self._fetched: dict[str, _Fetched] = {}
        self._lock = threading.Lock()

    def key_for(self, client: TrustedClient, kid: str, alg: str) -> PyJWK:
        jwk = find_key(client.jwks, kid, alg)
        if jwk is None and client.jku:
            jwk = self._fetched_key(client.jku, kid, alg)
        if jwk is None:
            raise KeyNotFound("unknown kid")
        try:
            return PyJWK(jwk, algorithm=alg)
        except PyJWTError:
            raise KeyNotFound("unusable key") from None

    def _fetched_key(self, url: str, kid: str, alg: str) -> dict | None:
        with self._lock:  # one fetch at a time; others wait at most the fetch timeout
            entry = self._fetched.setdefault(url, _Fetched())
            now = self.monotonic()
            jwk = find_key(entry.jwks, kid, alg)
            if jwk is not None and now - entry.fetched_at < MAX_AGE_SECONDS:
                return jwk
            if now - entry.attempted_at < self.cooldown:
                return jwk  # a stale key still works until the next attempt may be made
            entry.attempted_at = now
            fetched = self._fetch(url)
            if fetched is not None:
                entry.jwks, entry.fetched_at = fetched, now
            return find_key(entry.jwks, kid, alg)

    def _fetch(self, url: str) -> dict | None:
        self.fetches += 1
        try:
            # No redirects: the allow-listed URL is the only place keys may come from.
            with self.session.get(url, timeout=self.timeout, allow_redirects=False, stream=True,
                                  headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    log.warning("JWK Set fetch from %s answered HTTP %d", url,
                                response.status_code)
                    return None
                body = self._read_bounded(response)
        except requests.RequestException as exc:
            log.warning("JWK Set fetch from %s failed: %s", url, type(exc).__name__)
            return None
        if body is None:
            log.warning("JWK Set from %s is too large or too slow; ignored", url)
            return None
        try:
            jwks = json.loads(body)
        except (ValueError, RecursionError):
            jwks = None
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            log.warning("JWK Set from %s is not a JSON object with keys", url)
            return None
        return jwks

    def _read_bounded(self, response: requests.Response) -> bytes | None:
        """The body, or None past MAX_JWKS_BYTES or the timeout (a slow drip must not hang us)."""
        started, body = self.monotonic(), b""
        for chunk in response.iter_content(16 * 1024):
            body += chunk
            if len(body) > MAX_JWKS_BYTES or self.monotonic() - started > self.timeout:
                return None
        return body
