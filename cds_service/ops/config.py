"""Settings, read once at start from an optional TOML file (no file: development mode)."""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
# Client JWT algorithms: CDS Hooks names ES384 and RS384; the 256 variants only when a client's
# config lists them. Symmetric (HS*) and `none` can never be configured.
DEFAULT_ALGORITHMS = ("ES384", "RS384")
SUPPORTED_ALGORITHMS = frozenset({"ES384", "RS384", "ES256", "RS256"})


class ConfigError(ValueError):
    """The configuration file is unreadable or inconsistent."""


@dataclass(frozen=True)
class TrustedClient:
    """An EHR allowed to call the service (issuer of its JWTs) and the FHIR servers it may send."""

    iss: str
    jwks: dict | None = None  # inline JWK Set (from `jwks` or `jwks_file`)
    jku: str | None = None  # the only URL its keys may be fetched from
    tenant: str | None = None
    fhir_servers: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS


@dataclass(frozen=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = 2
    # A 2,000-resource chart is ~2 MB of JSON; anything far beyond is not a real hook call.
    max_body_bytes: int = 16 * 1024 * 1024
    cors_origins: tuple[str, ...] = ("*",)
    cards_dir: Path | None = None
    knowledge_dir: Path | None = None
    # Key for hashing patient ids in logs; random per process unless set (env or file).
    log_hash_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    development: bool = True
    source: Path | None = None
    clients: tuple[TrustedClient, ...] = ()
    # `aud` of client JWTs is checked against this base instead of the URL seen (behind a proxy).
    public_base_url: str | None = None
    # Whole hook call budget when data must be fetched from the FHIR server (cds-hooks P10).
    fhir_deadline_seconds: float = 1.5
    # Clock skew tolerated on client JWTs' exp, iat and nbf.
    jwt_leeway_seconds: float = 30.0
    # Writable folder for per-host state (the JWT replay cache), shared by the workers.
    instance_dir: Path = Path("instance")
    # A fetched JWK Set is refetched on an unknown kid at most this often.
    jwks_refetch_cooldown_seconds: float = 60.0
    # Where shown cards and feedback are stored; None: SQLite file instance_dir/cds.sqlite3.
    database_url: str | None = field(default=None, repr=False)  # may hold a password
    # Key of the patient pseudonyms in that store (CDS_RECORD_HASH_KEY, or read from
    # CDS_RECORD_HASH_KEY_FILE or `record_hash_key_file`); None: one generated and kept in
    # instance_dir, beside the database, where a copy of both allows re-identification.
    record_hash_key: bytes | None = field(default=None, repr=False)
    # The longest a hook call waits for the shared JWT replay store before checking without it.
    replay_store_timeout_seconds: float = 0.05
    # The longest a feedback call waits for its store before answering 503 (Retry-After): it
    # runs on a worker that also serves cards.
    feedback_store_timeout_seconds: float = 0.05
    # A patient-view card the clinician overrode is not shown again for this many days while
    # nothing new appears (0: never quieted); critical cards always show.
    override_quiet_days: int = 30
    # The longest a hook call waits to read those overrides (PostgreSQL) before showing every
    # card.
    override_store_timeout_seconds: float = 0.05

    def fhir_server_allowed(self, url: str, iss: str | None) -> bool:
        """Only configured FHIR servers are contacted; in development, loopback ones only."""
        base = url.rstrip("/")
        if self.development:
            host = urlsplit(base).hostname or ""
            return host in ("127.0.0.1", "localhost", "::1")
        return any(base == allowed.rstrip("/") for client in self.clients
                   if iss is None or client.iss == iss for allowed in client.fhir_servers)


def load_settings(path: str | Path | None = None) -> Settings:
    """Settings from a TOML file; with none, development defaults on loopback."""
    env_key = os.environ.get("CDS_LOG_HASH_KEY")
    extra = {"log_hash_key": env_key.encode()} if env_key else {}
    if os.environ.get("CDS_DATABASE_URL"):  # the environment wins over the file
        extra["database_url"] = os.environ["CDS_DATABASE_URL"]
    if os.environ.get("CDS_RECORD_HASH_KEY"):
        extra["record_hash_key"] = os.environ["CDS_RECORD_HASH_KEY"].encode()
    elif os.environ.get("CDS_RECORD_HASH_KEY_FILE"):
        extra["record_hash_key"] = read_key_file(Path(os.environ["CDS_RECORD_HASH_KEY_FILE"]))
    if path is None:
        return Settings(**extra)
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    base = path.parent
    server = spec.get("server", {})
    if not isinstance(spec.get("database_url", ""), str):
        raise ConfigError("database_url must be a string like postgresql://user@host/db")
    extra.setdefault("database_url", spec.get("database_url") or None)
    if spec.get("record_hash_key_file") and "record_hash_key" not in extra:
        extra["record_hash_key"] = read_key_file(path.parent / spec["record_hash_key_file"])

    def relative(value):
        return (base / value).resolve() if value else None

    clients = []
    for index, entry in enumerate(spec.get("clients", [])):
        if not isinstance(entry, dict) or not isinstance(entry.get("iss"), str):
            raise ConfigError(f"clients[{index}] needs an iss")
        jwks = entry.get("jwks")
        try:
            if isinstance(jwks, str):
                jwks = json.loads(jwks)
            if entry.get("jwks_file"):
                jwks = json.loads((base / entry["jwks_file"]).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"clients[{index}] keys cannot be read: {exc}") from exc
        if jwks is None and not entry.get("jku"):
            raise ConfigError(f"clients[{index}] needs jwks, jwks_file or jku")
        _check_client(index, entry, clients)
        clients.append(TrustedClient(
            iss=entry["iss"], jwks=jwks, jku=entry.get("jku"), tenant=entry.get("tenant"),
            fhir_servers=tuple(entry.get("fhir_servers", ())),
            algorithms=tuple(entry.get("algorithms", DEFAULT_ALGORITHMS))))
    try:
        return Settings(
            host=str(server.get("host", DEFAULT_HOST)),
            port=int(server.get("port", DEFAULT_PORT)),
            workers=int(server.get("workers", 2)),
            max_body_bytes=int(spec.get("max_body_bytes", Settings.max_body_bytes)),
            cors_origins=tuple(spec.get("cors_origins", ["*"])),
            cards_dir=relative(spec.get("cards_dir")),
            knowledge_dir=relative(spec.get("knowledge_dir")),
            development=False,
            source=path,
            clients=tuple(clients),
            public_base_url=_public_base_url(spec.get("public_base_url")),
            fhir_deadline_seconds=float(spec.get("fhir_deadline_seconds", 1.5)),
            jwt_leeway_seconds=float(spec.get("jwt_leeway_seconds", 30.0)),
            instance_dir=relative(spec.get("instance_dir")) or Settings.instance_dir,
            jwks_refetch_cooldown_seconds=float(spec.get("jwks_refetch_cooldown_seconds", 60.0)),
            replay_store_timeout_seconds=float(spec.get("replay_store_timeout_seconds", 0.05)),
            feedback_store_timeout_seconds=float(spec.get("feedback_store_timeout_seconds",
                                                          0.05)),
            override_quiet_days=_non_negative_int(spec.get("override_quiet_days", 30),
                                                  "override_quiet_days"),
            override_store_timeout_seconds=float(spec.get("override_store_timeout_seconds",
                                                          0.05)),
            **extra,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value in {path}: {exc}") from exc


MIN_KEY_BYTES = 16


def _non_negative_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a whole number of days, 0 or more")
    return value


def read_key_file(path: Path) -> bytes:
    """A secret key kept in a file of its own (e.g. a mounted Secret), outside instance_dir."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc.strerror}") from exc
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"the key file {path} holds fewer than {MIN_KEY_BYTES} bytes")
    return key


def _public_base_url(value: object) -> str | None:
    """The base URL clients call (their JWTs' aud): http(s), a host, nothing else to confuse."""
    if value is None:
        return None
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        valid = (parts is not None and parts.scheme in ("https", "http") and parts.hostname
                 and parts.port is not False and not parts.username and not parts.password
                 and not parts.query and not parts.fragment and "@" not in parts.netloc)
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError("public_base_url must be an http(s) URL with a host and no user, "
                          "query or fragment, e.g. https://cds.hospital.example/")
    return value


def _check_client(index: int, entry: dict, earlier: list[TrustedClient]) -> None:
    """Refuse settings that would weaken client authentication rather than run with them."""
    if any(client.iss == entry["iss"] for client in earlier):
        raise ConfigError(f"clients[{index}] repeats iss {entry['iss']}")
    algorithms = entry.get("algorithms", DEFAULT_ALGORITHMS)
    if (not isinstance(algorithms, list | tuple) or not algorithms
            or not all(isinstance(a, str) and a in SUPPORTED_ALGORITHMS for a in algorithms)):
        raise ConfigError(f"clients[{index}] algorithms must be a non-empty list drawn from "
                          + ", ".join(sorted(SUPPORTED_ALGORITHMS)))
    jku = entry.get("jku")
    if jku is not None:
        parts = urlsplit(jku) if isinstance(jku, str) else None
        loopback = parts is not None and parts.hostname in ("127.0.0.1", "localhost", "::1")
        # Keys fetched over plain HTTP could be swapped in transit; loopback is for tests.
        if parts is None or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
            raise ConfigError(f"clients[{index}] jku must be an https URL")
    if entry.get("tenant") is not None and not isinstance(entry["tenant"], str):
        raise ConfigError(f"clients[{index}] tenant must be a string")
