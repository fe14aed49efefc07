"""Settings, read once at start from an optional TOML file (no file: development mode) and the
CDS_* environment variables, both declared as pydantic models."""

from __future__ import annotations

import json
import secrets
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
# Client JWT algorithms: CDS Hooks names ES384 and RS384; the 256 variants only when a client's
# config lists them. Symmetric (HS*) and `none` can never be configured.
Algorithm = Literal["ES384", "RS384", "ES256", "RS256"]
DEFAULT_ALGORITHMS: tuple[Algorithm, ...] = ("ES384", "RS384")
SUPPORTED_ALGORITHMS = frozenset({"ES384", "RS384", "ES256", "RS256"})
MIN_KEY_BYTES = 16


class ConfigError(ValueError):
    """The configuration file is unreadable or inconsistent."""


def _https_jku(jku: str | None) -> str | None:
    # Keys fetched over plain HTTP could be swapped in transit; loopback is for tests.
    parts = urlsplit(jku) if jku is not None else None
    if parts is not None and not (parts.scheme == "https" or (
            parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1"))):
        raise PydanticCustomError("jku", "jku must be an https URL")
    return jku


class TrustedClient(BaseModel):
    """An EHR allowed to call the service (issuer of its JWTs) and the FHIR servers it may send.
    In the file, a `[[clients]]` table; `jwks` may also be JSON text or a `jwks_file`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    iss: StrictStr
    jwks: dict[str, Any] | None = None  # inline JWK Set (from `jwks` or `jwks_file`)
    algorithms: Annotated[tuple[Algorithm, ...], Field(min_length=1)] = DEFAULT_ALGORITHMS
    jku: Annotated[StrictStr | None, AfterValidator(_https_jku)] = None  # keys' only URL
    tenant: StrictStr | None = None
    fhir_servers: tuple[StrictStr, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _read_keys(cls, entry: Any, info: ValidationInfo) -> Any:
        """`jwks` as JSON text, or `jwks_file` relative to the config file, read into `jwks`."""
        if not isinstance(entry, dict) or not isinstance(entry.get("iss"), str):
            return entry  # the iss is what is wrong with it
        jwks = entry.get("jwks")
        try:
            if isinstance(jwks, str):
                jwks = json.loads(jwks)
            if entry.get("jwks_file"):
                base = (info.context or {}).get("base", Path())
                jwks = json.loads((base / entry["jwks_file"]).read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError) as exc:
            raise PydanticCustomError("keys", "keys cannot be read: {reason}",
                                      {"reason": str(exc)}) from None
        if jwks is None and not entry.get("jku"):
            raise PydanticCustomError("no_keys", "needs jwks, jwks_file or jku")
        # The issuers of the entries before this one, when read from the file.
        if entry["iss"] in (issuers := (info.context or {}).get("issuers", set())):
            raise PydanticCustomError("repeats", "repeats iss {iss}", {"iss": entry["iss"]})
        issuers.add(entry["iss"])
        return {**entry, "jwks": jwks}


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = 2
    # A 2,000-resource chart is ~2 MB of JSON; anything far beyond is not a real hook call.
    max_body_bytes: int = 16 * 1024 * 1024
    cors_origins: tuple[str, ...] = ("*",)
    cards_dir: Path | None = None
    knowledge_dir: Path | None = None
    # Key for hashing patient ids in logs; random per process unless set (env or file).
    log_hash_key: bytes = Field(default_factory=lambda: secrets.token_bytes(32), repr=False)
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
    database_url: str | None = Field(default=None, repr=False)  # may hold a password
    # Key of the patient pseudonyms in that store (CDS_RECORD_HASH_KEY, or read from
    # CDS_RECORD_HASH_KEY_FILE or `record_hash_key_file`); None: one generated and kept in
    # instance_dir, beside the database, where a copy of both allows re-identification.
    record_hash_key: bytes | None = Field(default=None, repr=False)
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


class Environment(BaseSettings):
    """The CDS_* environment variables (an empty one is unset); they win over the file."""

    model_config = SettingsConfigDict(env_prefix="CDS_", env_ignore_empty=True, extra="ignore")

    log_hash_key: bytes | None = Field(default=None, repr=False)
    database_url: str | None = Field(default=None, repr=False)
    record_hash_key: bytes | None = Field(default=None, repr=False)
    record_hash_key_file: Path | None = None


_PUBLIC_BASE_URL = ("public_base_url must be an http(s) URL with a host and no user, query or "
                    "fragment, e.g. https://cds.hospital.example/")


def _public_base_url(value: str) -> str:
    """The base URL clients call (their JWTs' aud): http(s), a host, nothing else to confuse."""
    try:
        parts = urlsplit(value)
        valid = (parts.scheme in ("https", "http") and parts.hostname
                 and parts.port is not False and not parts.username and not parts.password
                 and not parts.query and not parts.fragment and "@" not in parts.netloc)
    except ValueError:
        valid = False
    if not valid:
        raise PydanticCustomError("public_base_url", _PUBLIC_BASE_URL)
    return value


def _relative(value: Path | None, info: ValidationInfo) -> Path | None:
    base: Path = info.context["base"] if info.context else Path()  # load_settings gives it
    return (base / value).resolve() if value is not None else None


# A folder named in the file, relative to the file's folder; "" is none.
Folder = Annotated[Path | None, BeforeValidator(lambda value: value or None),
                   AfterValidator(_relative)]


class Server(BaseModel):
    host: str | None = None
    port: int | None = None
    workers: int | None = None


class ConfigFile(BaseModel):
    """The TOML file (README 'Configuration'). Unknown keys are ignored; a key left out (TOML
    has no null) keeps the Settings default."""

    model_config = ConfigDict(extra="ignore")

    database_url: Annotated[StrictStr | None,
                            BeforeValidator(lambda value: None if value == "" else value)] = None
    record_hash_key_file: StrictStr | None = None
    clients: list[TrustedClient] = []
    server: Server = Server()
    max_body_bytes: int | None = None
    cors_origins: tuple[str, ...] | None = None
    cards_dir: Folder = None
    knowledge_dir: Folder = None
    public_base_url: Annotated[StrictStr, AfterValidator(_public_base_url)] | None = None
    fhir_deadline_seconds: float | None = None
    jwt_leeway_seconds: float | None = None
    instance_dir: Folder = None
    jwks_refetch_cooldown_seconds: float | None = None
    replay_store_timeout_seconds: float | None = None
    feedback_store_timeout_seconds: float | None = None
    # Whole days, 0 or more (0: override quieting off).
    override_quiet_days: Annotated[StrictInt, Field(ge=0)] | None = None
    override_store_timeout_seconds: float | None = None


_ALGORITHMS = ("algorithms must be a non-empty list drawn from "
               + ", ".join(sorted(SUPPORTED_ALGORITHMS)))
# What each [[clients]] key's problem is called (after "clients[N] ").
_CLIENT_SAYS = {"iss": "needs an iss", "algorithms": _ALGORITHMS,
                "jku": "jku must be an https URL",
                "tenant": "tenant must be a string", "jwks": "keys cannot be read: jwks must "
                                                           "be a JWK Set object",
                "fhir_servers": "fhir_servers must be a list of URLs"}


def _config_error(error: ErrorDetails, path: Path) -> ConfigError:
    """pydantic's first error, in the words the service has always used."""
    loc, kind = error["loc"], error["type"]
    if loc[:1] == ("clients",) and len(loc) >= 2:
        key = loc[2] if len(loc) > 2 else "iss"  # an entry that is no table lacks an iss
        own = kind in ("keys", "no_keys", "repeats", "jku")
        return ConfigError(f"clients[{loc[1]}] "
                           + (error["msg"] if own else _CLIENT_SAYS.get(str(key), error["msg"])))
    if loc == ("public_base_url",):
        return ConfigError(f"invalid value in {path}: {_PUBLIC_BASE_URL}")
    if loc == ("database_url",):
        return ConfigError("database_url must be a string like postgresql://user@host/db")
    where = ".".join(map(str, loc))
    return ConfigError(f"invalid value in {path}: {where}: {error['msg']}")


def load_settings(path: str | Path | None = None) -> Settings:
    """Settings from a TOML file; with none, development defaults on loopback."""
    env = Environment()
    extra: dict[str, Any] = {"log_hash_key": env.log_hash_key} if env.log_hash_key else {}
    if env.database_url:
        extra["database_url"] = env.database_url
    if env.record_hash_key:
        extra["record_hash_key"] = env.record_hash_key
    elif env.record_hash_key_file:
        extra["record_hash_key"] = read_key_file(env.record_hash_key_file)
    if path is None:
        return Settings(**extra)
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        config = ConfigFile.model_validate(spec, context={"base": path.parent, "issuers": set()})
    except ValidationError as exc:
        raise _config_error(exc.errors()[0], path) from None
    if config.record_hash_key_file and "record_hash_key" not in extra:
        extra["record_hash_key"] = read_key_file(path.parent / config.record_hash_key_file)
    extra.setdefault("database_url", config.database_url)
    given = config.model_dump(exclude_none=True, exclude={
        "server", "clients", "database_url", "record_hash_key_file"})
    return Settings(**config.server.model_dump(exclude_none=True), **given, development=False,
                    source=path, clients=tuple(config.clients), **extra)


def read_key_file(path: Path) -> bytes:
    """A secret key kept in a file of its own (e.g. a mounted Secret), outside instance_dir."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc.strerror}") from exc
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"the key file {path} holds fewer than {MIN_KEY_BYTES} bytes")
    return key
