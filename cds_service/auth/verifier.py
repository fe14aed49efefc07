"""Client authentication (cds-hooks.md, Security): the EHR's signed JWT, checked before any route.

Order: issuer allow-listed -> algorithm allowed for it -> jku allowed -> audience is this URL ->
time claims -> jti and tenant present -> key for kid -> signature -> jti not seen before. Every
failure is the same 401 for the caller; the log line says why, with iss, kid and jti only (never
the token). Without a configuration file (development mode) nothing is checked.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
from jwt.exceptions import InvalidSignatureError, PyJWTError

from cds_service.auth.jwks import KeyNotFound, KeySets
from cds_service.auth.replay import ReplayCache
from cds_service.auth.resilient_replay import ResilientReplayCache
from cds_service.errors import AuthenticationRequired
from cds_service.ops.config import ConfigError, Settings, TrustedClient
from cds_service.ops.observability import AUTH_FAILURES
from cds_service.store.guard import StoreGuard

log = logging.getLogger("cds_service.auth.verifier")

PROTECTED_PREFIX = "/cds-services"  # discovery, service calls and feedback
MAX_TOKEN_CHARS = 8192  # real CDS Hooks JWTs are under 1 KB
MAX_JTI_CHARS = 256
REPLAY_DB_NAME = "jwt-replay.sqlite3"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Rejected(Exception):
    """Why a token was refused: logged, never sent to the caller."""


@dataclass(frozen=True)
class VerifiedClient:
    iss: str
    jti: str
    tenant: str | None


def _normalise_url(url: str) -> str | None:
    """Scheme and host in lower case, default port dropped; the path stays exact."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")


def _plain_url(url: str) -> bool:
    """No #fragment and no user@ before the host: such an aud names no URL of ours."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return not parts.fragment and "#" not in url and "@" not in parts.netloc


def _audience_matches(aud: Any, expected: str) -> bool:
    claimed = [aud] if isinstance(aud, str) else aud
    if not isinstance(claimed, list) or not all(isinstance(a, str) for a in claimed):
        return False
    claimed = [a for a in claimed if _plain_url(a)]
    target = _normalise_url(expected)
    return target is not None and any(_normalise_url(a) == target for a in claimed)


def _number(claims: dict, name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejected(f"missing or non-numeric {name}")
    try:
        number = float(value)
    except OverflowError:  # a JSON integer beyond float range
        number = math.inf
    if not math.isfinite(number):  # json.loads reads NaN and Infinity; NaN compares as "valid"
        raise Rejected(f"non-finite {name}")
    return number


def _shown(value: Any) -> str:
    """A claim as it may appear in a log line: short, one line, no control characters."""
    if value is None:
        return "-"
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    return value[:80].encode("unicode_escape").decode("ascii")


def _shown_aud(value: Any) -> str:
    """aud may be a list of URLs (RFC 7519)."""
    if isinstance(value, list):
        return "[" + ",".join(_shown(v) for v in value[:4]) + "]"
    return _shown(value)


class ClientVerifier:
    """Checks `Authorization: Bearer <JWT>` headers against the trusted clients."""

    def __init__(self, settings: Settings, *, keys: KeySets | None = None,
                 replay: ResilientReplayCache | ReplayCache | None = None,
                 clock: Callable[[], float] = time.time):
        self.clients: dict[str, TrustedClient] = {c.iss: c for c in settings.clients}
        self.leeway = settings.jwt_leeway_seconds
        self.keys = keys or KeySets(
            refetch_cooldown_seconds=settings.jwks_refetch_cooldown_seconds)
        self.replay = replay or replay_cache(settings)
        self.clock = clock
        if not self.clients:
            log.warning("no trusted clients configured: every call will be refused (401)")

    def verify(self, authorization: str | None, audience: str) -> VerifiedClient:
        """The verified client, or AuthenticationRequired (after logging the reason)."""
        context: dict[str, Any] = {}
        try:
            return self._verify(authorization, audience, context)
        except Rejected as exc:
            AUTH_FAILURES.inc()
            audiences = (f" expected_aud={_shown(context['expected_aud'])} presented_aud="
                         f"{_shown_aud(context['presented_aud'])}"
                         if "expected_aud" in context else "")
            log.warning("client authentication failed: reason=%s iss=%s kid=%s jti=%s%s",
                        exc, _shown(context.get("iss")), _shown(context.get("kid")),
                        _shown(context.get("jti")), audiences)
            raise AuthenticationRequired() from None

    def _verify(self, authorization: str | None, audience: str,
                context: dict[str, Any]) -> VerifiedClient:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Rejected("no bearer token")
        if len(token) > MAX_TOKEN_CHARS:
            raise Rejected("token too long")
        try:
            unverified = jwt.decode_complete(token, options={"verify_signature": False})
        except PyJWTError:
            raise Rejected("malformed token") from None
        header, claims = unverified["header"], unverified["payload"]
        context.update(iss=claims.get("iss"), kid=header.get("kid"), jti=claims.get("jti"))

        client = self.clients.get(claims["iss"]) if isinstance(claims.get("iss"), str) else None
        if client is None:
            raise Rejected("unknown issuer")
        alg = header.get("alg")
        if alg not in client.algorithms:  # `none`, HS* and anything unlisted end here
            raise Rejected(f"algorithm {_shown(alg)} not allowed")
        if "jku" in header and header["jku"] != client.jku:
            raise Rejected("jku not allow-listed for this issuer")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Rejected("missing kid")
        if not _audience_matches(claims.get("aud"), audience):
            # Both URLs in the log: a proxy or base URL set up wrong shows at once.
            context.update(expected_aud=audience, presented_aud=claims.get("aud"))
            raise Rejected("wrong audience")
        self._check_times(claims)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
            raise Rejected("missing jti")
        if client.tenant is not None and claims.get("tenant") != client.tenant:
            raise Rejected("wrong tenant")

        try:
            key = self.keys.key_for(client, kid, alg)
        except KeyNotFound as exc:
            raise Rejected(str(exc)) from None
        try:
            # The algorithm list comes from configuration, never from the token's header.
            jwt.decode(token, key=key, algorithms=list(client.algorithms),
                       options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                                "verify_aud": False, "verify_iss": False,
                                "enforce_minimum_key_length": True})
        except InvalidSignatureError:
            raise Rejected("bad signature") from None
        except PyJWTError as exc:
            raise Rejected(f"invalid token ({type(exc).__name__})") from None

        expires_at = _number(claims, "exp", required=True) + self.leeway
        if not self.replay.first_use(client.iss, jti, expires_at, self.clock()):
            raise Rejected("replayed jti")
        return VerifiedClient(iss=client.iss, jti=jti, tenant=claims.get("tenant"))

    def _check_times(self, claims: dict) -> None:
        # Our own checks (not PyJWT's) so there is one injectable clock; no cap on lifetime.
        now = self.clock()
        exp = _number(claims, "exp", required=True)
        iat = _number(claims, "iat", required=True)
        nbf = _number(claims, "nbf", required=False)
        if exp + self.leeway <= now:
            raise Rejected("expired")
        if iat > now + self.leeway:
            raise Rejected("issued in the future")
        if nbf is not None and nbf > now + self.leeway:
            raise Rejected("not yet valid")


def replay_cache(settings: Settings) -> ResilientReplayCache:
    """The shared database's cache (with a database configured), then the host's SQLite file,
    then this worker's memory: each store behind a deadline and a circuit breaker."""
    stores = []
    if settings.database_url:
        from sqlalchemy.exc import SQLAlchemyError

        from cds_service.auth.shared_replay import SharedReplayCache
        from cds_service.store.store import FeedbackStore, StoreUnavailable

        store = FeedbackStore(settings.database_url)
        try:  # migrate here, once, not on a worker's first call (slower than its deadline)
            store.ensure_ready()
        except (StoreUnavailable, SQLAlchemyError):
            pass  # retried on first use, behind the guard
        store.dispose()  # built before the server forks: let no pooled connection be inherited
        stores.append((SharedReplayCache(store), StoreGuard(
            "replay-shared", deadline_seconds=settings.replay_store_timeout_seconds,
            fallback="checking replays in this host's file")))
    # Inline: SQLite waits at most its busy timeout (replay.BUSY_TIMEOUT_SECONDS).
    stores.append((ReplayCache(Path(settings.instance_dir) / REPLAY_DB_NAME), StoreGuard(
        "replay-local", deadline_seconds=None, fallback="checking replays in memory")))
    return ResilientReplayCache(stores)


def expected_audience(settings: Settings, path: str) -> str:
    """The URL the client must have put in `aud`: the configured public base and the path
    called. Never the Host or X-Forwarded-* headers: the caller controls those."""
    assert settings.public_base_url, "ClientAuthentication refuses to start without it"
    return settings.public_base_url.rstrip("/") + path


def is_protected(method: str, path: str) -> bool:
    """Discovery, service calls and feedback need a client JWT; preflights and docs do not."""
    if method == "OPTIONS":
        return False
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


class ClientAuthentication:
    """Who is calling: the authenticated EHR's issuer, or AuthenticationRequired."""

    def __init__(self, settings: Settings, verifier: ClientVerifier | None = None):
        self.settings = settings
        # Development mode (no configuration file) accepts unsigned calls on loopback.
        if not settings.development and not settings.public_base_url:
            # aud would otherwise be checked against the Host header, which the caller writes.
            raise ConfigError("public_base_url is required with [[clients]]: the URL the EHRs "
                              "call, which their JWTs must name in aud")
        self.verifier = verifier or (None if settings.development else ClientVerifier(settings))

    def __call__(self, method: str, path: str, authorization: str | None) -> str | None:
        """The issuer of a call's valid JWT; None when the call needs none (development mode,
        preflights, health); AuthenticationRequired otherwise."""
        if self.verifier is None or not is_protected(method, path):
            return None
        client = self.verifier.verify(authorization, expected_audience(self.settings, path))
        return client.iss


def client_authentication(settings: Settings) -> ClientAuthentication:
    return ClientAuthentication(settings)
