"""The configuration file and the CDS_* environment variables (ops/config.py): what is read, what
is refused at start and in which words."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cds_service.ops.config import ConfigError, Settings, TrustedClient, load_settings

KEYS = {"keys": []}


@pytest.fixture(autouse=True)
def no_cds_environment(monkeypatch):
    for name in ("CDS_LOG_HASH_KEY", "CDS_DATABASE_URL", "CDS_RECORD_HASH_KEY",
                 "CDS_RECORD_HASH_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)


def config(folder: Path, text: str) -> Path:
    (folder / "keys.json").write_text(json.dumps(KEYS))
    path = folder / "service.toml"
    path.write_text(text)
    return path


def client(extra: str = "", iss: str = "https://ehr.example.org") -> str:
    return f'[[clients]]\niss = "{iss}"\njwks_file = "keys.json"\n{extra}\n'


def test_every_key_of_the_file_is_read_and_folders_are_relative_to_it(tmp_path):
    settings = load_settings(config(tmp_path, """
public_base_url = "https://cds.example.org/"
max_body_bytes = 1000
cors_origins = ["https://ehr.example.org"]
cards_dir = "cards"
knowledge_dir = "knowledge"
instance_dir = "state"
fhir_deadline_seconds = 2
jwt_leeway_seconds = 5
jwks_refetch_cooldown_seconds = 300
replay_store_timeout_seconds = 0.1
feedback_store_timeout_seconds = 1
database_url = "postgresql://cds@db/cds"
[server]
host = "0.0.0.0"
port = 9000
workers = 4
""" + client('jku = "https://ehr.example.org/jwks"\ntenant = "north"\n'
             'fhir_servers = ["https://fhir.example.org/r4"]\nalgorithms = ["ES256"]')))
    assert (settings.host, settings.port, settings.workers) == ("0.0.0.0", 9000, 4)
    assert settings.max_body_bytes == 1000 and settings.cors_origins == ("https://ehr.example.org",)
    assert settings.cards_dir == (tmp_path / "cards").resolve()
    assert settings.knowledge_dir == (tmp_path / "knowledge").resolve()
    assert settings.instance_dir == (tmp_path / "state").resolve()
    assert (settings.fhir_deadline_seconds, settings.jwt_leeway_seconds,
            settings.jwks_refetch_cooldown_seconds, settings.replay_store_timeout_seconds,
            settings.feedback_store_timeout_seconds) == (2.0, 5.0, 300.0, 0.1, 1.0)
    assert settings.database_url == "postgresql://cds@db/cds"
    assert not settings.development and settings.source == tmp_path / "service.toml"
    assert settings.clients == (TrustedClient(
        iss="https://ehr.example.org", jwks=KEYS, jku="https://ehr.example.org/jwks",
        tenant="north", fhir_servers=("https://fhir.example.org/r4",), algorithms=("ES256",)),)


def test_what_the_file_leaves_out_keeps_the_defaults(tmp_path):
    settings = load_settings(config(tmp_path, 'cards_dir = ""\n'))
    defaults = Settings()
    for name in ("host", "port", "workers", "max_body_bytes", "cors_origins", "cards_dir",
                 "instance_dir", "fhir_deadline_seconds", "database_url", "public_base_url"):
        assert getattr(settings, name) == getattr(defaults, name), name
    assert settings.clients == () and not settings.development


def test_the_environment_is_read_by_load_settings_and_wins_over_the_file(tmp_path, monkeypatch):
    key = tmp_path / "record.key"
    key.write_text("0123456789abcdef0123\n")
    monkeypatch.setenv("CDS_DATABASE_URL", "postgresql://env@db/cds")
    monkeypatch.setenv("CDS_LOG_HASH_KEY", "log-key")
    monkeypatch.setenv("CDS_RECORD_HASH_KEY_FILE", str(key))
    settings = load_settings(config(tmp_path, 'database_url = "postgresql://file@db/cds"\n'))
    assert settings.database_url == "postgresql://env@db/cds"
    assert settings.log_hash_key == b"log-key"
    assert settings.record_hash_key == b"0123456789abcdef0123"
    assert load_settings(None).database_url == "postgresql://env@db/cds"
    # Settings built in code (tests, tools) are what they say: no environment.
    assert Settings().database_url is None and Settings().record_hash_key is None


def test_an_empty_environment_variable_is_unset(tmp_path, monkeypatch):
    monkeypatch.setenv("CDS_DATABASE_URL", "")
    monkeypatch.setenv("CDS_RECORD_HASH_KEY", "")
    settings = load_settings(config(tmp_path, 'database_url = "postgresql://file@db/cds"\n'))
    assert settings.database_url == "postgresql://file@db/cds"
    assert settings.record_hash_key is None


def test_secrets_stay_out_of_the_settings_repr(monkeypatch):
    monkeypatch.setenv("CDS_DATABASE_URL", "postgresql://cds:pa55word@db/cds")
    monkeypatch.setenv("CDS_RECORD_HASH_KEY", "record-key-0123456789")
    text = repr(load_settings(None))
    assert "pa55word" not in text and "record-key" not in text and "log_hash_key" not in text


@pytest.mark.parametrize(("text", "says"), [
    (client('algorithms = ["HS256"]'),
     "clients[0] algorithms must be a non-empty list drawn from ES256, ES384, RS256, RS384"),
    (client("algorithms = []"),
     "clients[0] algorithms must be a non-empty list drawn from ES256, ES384, RS256, RS384"),
    (client('jku = "http://keys.example.org/jwks"'), "clients[0] jku must be an https URL"),
    (client("jku = 5"), "clients[0] jku must be an https URL"),
    (client("tenant = 5"), "clients[0] tenant must be a string"),
    ('[[clients]]\njwks_file = "keys.json"\n', "clients[0] needs an iss"),
    ("clients = [5]\n", "clients[0] needs an iss"),
    ('[[clients]]\niss = "a"\n', "clients[0] needs jwks, jwks_file or jku"),
    ('[[clients]]\niss = "a"\njwks = "{"\n',
     "clients[0] keys cannot be read: Expecting property name enclosed in double quotes: "
     "line 1 column 2 (char 1)"),
    (client() + client(), "clients[1] repeats iss https://ehr.example.org"),
    # The first problem in the file is the one reported, entry by entry.
    (client() + client() + client("tenant = 5", iss="b"),
     "clients[1] repeats iss https://ehr.example.org"),
    ("database_url = 5\n", "database_url must be a string like postgresql://user@host/db"),
    ('public_base_url = "https://user@cds.example/"\n',
     "invalid value in {path}: public_base_url must be an http(s) URL with a host and no user, "
     "query or fragment, e.g. https://cds.hospital.example/"),
    ('record_hash_key_file = "short.key"\n', "the key file {folder}/short.key holds fewer than "
                                             "16 bytes"),
    ("not toml", "cannot read config {path}: "),
])
def test_a_bad_file_is_refused_at_start_in_the_services_words(tmp_path, text, says):
    (tmp_path / "short.key").write_text("short")
    path = config(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert str(refused.value).startswith(says.format(path=path, folder=tmp_path))


@pytest.mark.parametrize(("text", "names"), [
    # Before: the string became one origin per character (a "*" in it allowed every origin).
    ('cors_origins = "https://ehr.example.org"\n', "cors_origins"),
    # Before: truncated to port 9000.
    ("[server]\nport = 9000.5\n", "server.port"),
    ('fhir_deadline_seconds = "soon"\n', "fhir_deadline_seconds"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_its_key(tmp_path, text, names):
    path = config(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert str(refused.value).startswith(f"invalid value in {path}: {names}: ")


@pytest.mark.parametrize(("entry", "says"), [
    # Before: accepted, and every token of the client then failed on a key set that was a list.
    ('jwks = "[1]"', "clients[0] keys cannot be read: jwks must be a JWK Set object"),
    # Before: one allowed FHIR server per character of the string.
    ('fhir_servers = "https://fhir.example.org/r4"',
     "clients[0] fhir_servers must be a list of URLs"),
])
def test_client_keys_and_fhir_servers_of_the_wrong_shape_are_refused(tmp_path, entry, says):
    with pytest.raises(ConfigError) as refused:
        load_settings(config(tmp_path, f'[[clients]]\niss = "a"\njku = "https://k.example/"\n'
                                       f"{entry}\n"))
    assert str(refused.value) == says
