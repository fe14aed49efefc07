"""Settings, read once at start from an optional TOML file (no file: development mode)."""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class ConfigError(ValueError):
    """The configuration file is unreadable or inconsistent."""


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


def load_settings(path: str | Path | None = None) -> Settings:
    """Settings from a TOML file; with none, development defaults on loopback."""
    env_key = os.environ.get("CDS_LOG_HASH_KEY")
    extra = {"log_hash_key": env_key.encode()} if env_key else {}
    if path is None:
        return Settings(**extra)
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    base = path.parent
    server = spec.get("server", {})

    def relative(value):
        return (base / value).resolve() if value else None

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
            **extra,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value in {path}: {exc}") from exc
