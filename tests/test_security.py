"""Client authentication (cds-hooks.md, Security): only a trusted client's fresh, signed JWT for
this exact URL gets past /cds-services; every refusal looks the same and never logs the token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import multiprocessing
import threading
import time
import tomllib
import uuid
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner
from conftest import ANCHOR, FIXTURES
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service.auth.jwks import KeyNotFound, KeySets
from cds_service.auth.replay import ReplayCache
from cds_service.auth.verifier import ClientAuthentication
from cds_service.bootstrap import create_app, service_of
from cds_service.cli import main
from cds_service.errors import AuthenticationRequired
from cds_service.ops.config import ConfigError, Settings, TrustedClient, load_settings

EHR = "https://ehr.example.org"
SANDBOX = "https://sandbox.cds-hooks.org"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
EPIC = "https://fhir.epic.example/interconnect-fhir-oauth"
TENANTED = "https://tenanted.example.org"
ES256_CLIENT = "https://es256.example.org"

BASE = "http://localhost"
DISCOVERY = "/cds-services"
PATIENT_VIEW = "/cds-services/calciphylaxis-patient-view"
REFERENCE = json.loads((FIXTURES / "requests" / "reference-patient-view.json").read_text())


# --- keys, configuration and tokens -----------------------------------------------------------

class Keys:
    ec384 = ec.generate_private_key(ec.SECP384R1())
    ec256 = ec.generate_private_key(ec.SECP256R1())
    rsa2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    other_ec384 = ec.generate_private_key(ec.SECP384R1())  # trusted by nobody


def public_jwk(private_key, kid: str) -> dict:
    algorithm = ECAlgorithm if isinstance(private_key, ec.EllipticCurvePrivateKey) else RSAAlgorithm
    return {**algorithm.to_jwk(private_key.public_key(), as_dict=True), "kid": kid}


def jwk_set(*pairs) -> dict:
    return {"keys": [public_jwk(key, kid) for key, kid in pairs]}


def write_config(folder: Path, clients: str, top: str = "") -> Path:
    (folder / "ehr-jwks.json").write_text(json.dumps(jwk_set(
        (Keys.ec384, "ec-1"), (Keys.rsa2048, "rsa-1"), (Keys.rsa1024, "rsa-small"))))
    (folder / "sandbox-jwks.json").write_text(json.dumps(jwk_set((Keys.ec384, SANDBOX_KID))))
    (folder / "epic-jwks.json").write_text(json.dumps(jwk_set((Keys.rsa2048, "epic-2024"))))
    (folder / "es256-jwks.json").write_text(json.dumps(jwk_set((Keys.ec256, "p256"))))
    path = folder / "service.toml"
    if "public_base_url" not in top:  # required in production mode: the test client's URL
        top = f'public_base_url = "{BASE}/"\n{top}'
    path.write_text(f'instance_dir = "instance"\n{top}\n{clients}')
    return path


CLIENTS = f"""
[[clients]]
iss = "{EHR}"
jwks_file = "ehr-jwks.json"

[[clients]]
iss = "{SANDBOX}"
jwks_file = "sandbox-jwks.json"
jku = "{SANDBOX_JKU}"
algorithms = ["ES384"]

[[clients]]
iss = "{EPIC}"
jwks_file = "epic-jwks.json"
algorithms = ["RS384"]

[[clients]]
iss = "{TENANTED}"
jwks_file = "ehr-jwks.json"
tenant = "hospital-a"

[[clients]]
iss = "{ES256_CLIENT}"
jwks_file = "es256-jwks.json"
algorithms = ["ES256"]
"""


def token(*, key=Keys.ec384, alg: str = "ES384", kid: str = "ec-1", iss: str = EHR,
          aud: str | list[str] = BASE + DISCOVERY, lifetime: int = 300, headers: dict | None = None,
          drop: tuple[str, ...] = (), **claims) -> str:
    now = int(time.time())
    payload = {"iss": iss, "aud": aud, "iat": now, "exp": now + lifetime,
               "jti": str(uuid.uuid4()), **claims}
    for name in drop:
        payload.pop(name)
    return jwt.encode(payload, key, algorithm=alg,
                      headers={"typ": "JWT", "kid": kid, **(headers or {})})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict, payload: dict, sign=lambda signing_input: b"") -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def valid_claims() -> dict:
    now = int(time.time())
    return {"iss": EHR, "aud": BASE + DISCOVERY, "iat": now, "exp": now + 300,
            "jti": str(uuid.uuid4())}


def bearer(value: str) -> dict:
    return {"Authorization": f"Bearer {value}"}


def auth_of(app) -> ClientAuthentication:
    authenticate = service_of(app).parts.authenticate
    assert isinstance(authenticate, ClientAuthentication)
    return authenticate


@pytest.fixture(scope="module")
def secured_app(tmp_path_factory):
    settings = load_settings(write_config(tmp_path_factory.mktemp("secured"), CLIENTS))
    app = create_app(settings, clock=lambda: ANCHOR)
    app.config["TESTING"] = True
    return app


@pytest.fixture()
def client(secured_app):
    return secured_app.test_client()


@pytest.fixture(scope="module")
def refusal(secured_app) -> bytes:
    """The one 401 body every refusal must share."""
    response = secured_app.test_client().get(DISCOVERY)
    assert response.status_code == 401
    return response.get_data()


# --- rejections: one 401, the same body, a reason in the log, never the token -----------------

def _tampered_signature() -> str:
    head, body, signature = token().split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[10] ^= 0x01
    return f"{head}.{body}.{b64(bytes(raw))}"


def _tampered_claims() -> str:
    head, _body, signature = token().split(".")
    forged = {**valid_claims(), "iss": EHR, "tenant": "someone-else"}
    return f"{head}.{b64(json.dumps(forged).encode())}.{signature}"


def _quietly(make, **kwargs) -> str:
    with warnings.catch_warnings():  # PyJWT warns when signing with a short key: intended here
        warnings.simplefilter("ignore")
        return make(**kwargs)


def _hs256_with_public_key_as_secret() -> str:
    pem = Keys.ec384.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return hand_made({"alg": "HS256", "typ": "JWT", "kid": "ec-1"}, valid_claims(),
                     lambda data: hmac.new(pem, data, hashlib.sha256).digest())


REJECTED = {
    "alg none": lambda: hand_made({"alg": "none", "typ": "JWT", "kid": "ec-1"}, valid_claims()),
    "HS256 keyed with the public key": _hs256_with_public_key_as_secret,
    "wrong aud": lambda: token(aud="https://other-service.example.org/cds-services"),
    "aud of another endpoint": lambda: token(aud=BASE + PATIENT_VIEW),
    "expired": lambda: token(iat=int(time.time()) - 600, exp=int(time.time()) - 120),
    "future nbf": lambda: token(nbf=int(time.time()) + 600),
    "iat in the future": lambda: token(iat=int(time.time()) + 600),
    "unknown iss": lambda: token(iss="https://attacker.example.org"),
    "unknown kid": lambda: token(kid="no-such-key"),
    "key of another issuer's kid": lambda: token(key=Keys.other_ec384),
    "tampered signature": _tampered_signature,
    "tampered claims": _tampered_claims,
    "jku not allow-listed": lambda: token(headers={"jku": "https://attacker.example.org/k.json"}),
    "sandbox token naming another jku": lambda: token(
        iss=SANDBOX, kid=SANDBOX_KID, headers={"jku": "https://attacker.example.org/jwks.json"}),
    "missing jti": lambda: token(drop=("jti",)),
    "missing exp": lambda: token(drop=("exp",)),
    "missing iat": lambda: token(drop=("iat",)),
    "non-numeric exp": lambda: token(exp="tomorrow"),
    "ES256 for a client configured for ES384": lambda: token(key=Keys.ec256, alg="ES256"),
    "RS256 for a client configured for RS384": lambda: token(key=Keys.rsa2048, alg="RS256",
                                                             kid="rsa-1"),
    "RSA key under 2048 bits": lambda: _quietly(token, key=Keys.rsa1024, alg="RS384",
                                                kid="rsa-small"),
    "ES384 token naming an RSA key's kid": lambda: token(kid="rsa-1"),
    "missing kid": lambda: jwt.encode(valid_claims(), Keys.ec384, algorithm="ES384"),
    "tenant missing": lambda: token(iss=TENANTED),
    "wrong tenant": lambda: token(iss=TENANTED, tenant="hospital-b"),
    "not a JWT": lambda: "not-a-jwt",
    "garbage segments": lambda: "eyJ.eyJ.AAAA",
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_bad_token_is_refused_with_the_generic_401(case, client, refusal, caplog):
    value = REJECTED[case]()
    with caplog.at_level(logging.INFO):
        response = client.get(DISCOVERY, headers=bearer(value))
    assert response.status_code == 401
    assert response.get_data() == refusal
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "client authentication failed: reason=" in caplog.text
    for part in {value, *value.split(".")} - {""}:
        assert len(part) < 8 or part not in caplog.text


def test_the_401_body_is_an_operation_outcome_that_says_nothing_specific(refusal):
    outcome = json.loads(refusal)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"] == [{"severity": "error", "code": "login",
                                 "diagnostics": "authentication required"}]


@pytest.mark.parametrize("authorization", ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz",
                                           "Token abc.def.ghi", "Bearer " + "a" * 8100])
def test_missing_or_non_bearer_authorization_is_refused(authorization, client, refusal):
    headers = {"Authorization": authorization} if authorization else {}
    response = client.get(DISCOVERY, headers=headers)
    assert response.status_code == 401
    assert response.get_data() == refusal


def test_the_log_says_why_with_iss_kid_and_jti(client, caplog):
    value = token(iat=int(time.time()) - 600, exp=int(time.time()) - 120, jti="jti-expired-1")
    with caplog.at_level(logging.INFO):
        assert client.get(DISCOVERY, headers=bearer(value)).status_code == 401
    assert (f"reason=expired iss={EHR} kid=ec-1 jti=jti-expired-1") in caplog.text


def test_a_wrong_audience_logs_the_expected_and_the_presented_aud(client, caplog):
    """An integrator behind a proxy sees at once which base URL is wrong; never the token."""
    value = token(aud="https://cds.old-name.example/cds-services")
    with caplog.at_level(logging.INFO):
        assert client.get(DISCOVERY, headers=bearer(value)).status_code == 401
    assert (f"reason=wrong audience iss={EHR}" in caplog.text)
    assert (f"expected_aud={BASE}{DISCOVERY} "
            "presented_aud=https://cds.old-name.example/cds-services") in caplog.text
    assert value not in caplog.text and value.split(".")[2] not in caplog.text
    listed = token(aud=["https://a.example/cds-services", "https://b.example/cds-services"])
    with caplog.at_level(logging.INFO):
        client.get(DISCOVERY, headers=bearer(listed))
    assert "presented_aud=[https://a.example/cds-services,https://b.example/cds-services]" \
        in caplog.text


def test_control_characters_in_claims_cannot_forge_log_lines(client, caplog):
    value = token(iss="https://x.example\nFAKE LOG LINE", jti="a\r\nb")
    with caplog.at_level(logging.INFO):
        assert client.get(DISCOVERY, headers=bearer(value)).status_code == 401
    [line] = [r.getMessage() for r in caplog.records if "authentication failed" in r.getMessage()]
    assert "\n" not in line and "\r" not in line


def test_a_replayed_token_is_refused(client, refusal, caplog):
    value = token()
    assert client.get(DISCOVERY, headers=bearer(value)).status_code == 200
    with caplog.at_level(logging.INFO):
        second = client.get(DISCOVERY, headers=bearer(value))
    assert second.status_code == 401
    assert second.get_data() == refusal
    assert "reason=replayed jti" in caplog.text
    assert value not in caplog.text


def test_the_same_jti_from_two_issuers_is_not_a_replay(client):
    shared = "jti-shared-by-two-issuers"
    assert client.get(DISCOVERY, headers=bearer(token(jti=shared))).status_code == 200
    other = token(iss=EPIC, key=Keys.rsa2048, alg="RS384", kid="epic-2024", jti=shared)
    assert client.get(DISCOVERY, headers=bearer(other)).status_code == 200


# --- acceptance ------------------------------------------------------------------------------

def test_valid_es384_token_opens_discovery(client):
    response = client.get(DISCOVERY, headers=bearer(token()))
    assert response.status_code == 200
    assert response.get_json()["services"]


def test_valid_rs384_token_gets_cards_from_a_service_call(client):
    value = token(key=Keys.rsa2048, alg="RS384", kid="rsa-1", aud=BASE + PATIENT_VIEW)
    response = client.post(PATIENT_VIEW, json=REFERENCE, headers=bearer(value))
    assert response.status_code == 200
    assert response.get_json()["cards"]


def test_the_service_call_sees_the_verified_issuer(secured_app, client, monkeypatch):
    engine = service_of(secured_app).engine
    seen = []
    original = engine.run

    def spy(*args, **kwargs):
        seen.append(kwargs.get("client_iss"))
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "run", spy)
    value = token(aud=BASE + PATIENT_VIEW)
    assert client.post(PATIENT_VIEW, json=REFERENCE, headers=bearer(value)).status_code == 200
    assert seen == [EHR]


def test_a_service_call_without_a_token_never_reaches_the_engine(secured_app, client,
                                                                 monkeypatch, refusal):
    engine = service_of(secured_app).engine
    for method in ("run", "call"):
        monkeypatch.setattr(engine, method, lambda *a, **k: pytest.fail("engine was called"))
    response = client.post(PATIENT_VIEW, json=REFERENCE)
    assert response.status_code == 401
    assert response.get_data() == refusal


def test_sandbox_shaped_token_is_accepted_without_fetching_keys(secured_app, client):
    now = int(time.time())
    value = jwt.encode({"iss": SANDBOX, "aud": BASE + PATIENT_VIEW, "exp": now + 300,
                        "iat": now, "jti": str(uuid.uuid4())}, Keys.ec384, algorithm="ES384",
                       headers={"typ": "JWT", "kid": SANDBOX_KID, "jku": SANDBOX_JKU})
    response = client.post(PATIENT_VIEW, json=REFERENCE, headers=bearer(value))
    assert response.status_code == 200
    assert auth_of(secured_app).verifier.keys.fetches == 0  # the saved set sufficed


def test_epic_shaped_token_is_accepted(client):
    now = int(time.time())
    value = jwt.encode({"iss": EPIC, "sub": "3fd8c7b2-epic-client", "aud": BASE + PATIENT_VIEW,
                        "iat": now, "nbf": now, "exp": now + 900, "jti": str(uuid.uuid4())},
                       Keys.rsa2048, algorithm="RS384", headers={"typ": "JWT", "kid": "epic-2024"})
    response = client.post(PATIENT_VIEW, json=REFERENCE, headers=bearer(value))
    assert response.status_code == 200


def test_a_long_lived_token_is_not_capped_at_five_minutes(client):
    value = token(iat=int(time.time()) - 1200, exp=int(time.time()) + 1200)
    assert client.get(DISCOVERY, headers=bearer(value)).status_code == 200


def test_clock_skew_within_the_leeway_is_tolerated(client):
    now = int(time.time())
    just_expired = token(iat=now - 320, exp=now - 20)  # leeway is 30 s
    slightly_ahead = token(iat=now + 20, nbf=now + 20, exp=now + 320)
    assert client.get(DISCOVERY, headers=bearer(just_expired)).status_code == 200
    assert client.get(DISCOVERY, headers=bearer(slightly_ahead)).status_code == 200


def test_aud_may_be_an_array_and_differ_only_in_case_or_default_port(client):
    array = token(aud=["https://elsewhere.example.org", BASE + DISCOVERY])
    spelled = token(aud="HTTP://LocalHost:80/cds-services")
    assert client.get(DISCOVERY, headers=bearer(array)).status_code == 200
    assert client.get(DISCOVERY, headers=bearer(spelled)).status_code == 200


def test_aud_path_must_match_exactly(client):
    for aud in (BASE + "/cds-services/", BASE + "/CDS-SERVICES", BASE + ":8080/cds-services"):
        assert client.get(DISCOVERY, headers=bearer(token(aud=aud))).status_code == 401


def test_tenant_and_extra_claims_are_accepted_when_they_match(client):
    value = token(iss=TENANTED, tenant="hospital-a", sub="someone", custom={"x": 1})
    assert client.get(DISCOVERY, headers=bearer(value)).status_code == 200


def test_es256_is_accepted_only_where_configured(client):
    value = token(iss=ES256_CLIENT, key=Keys.ec256, alg="ES256", kid="p256")
    assert client.get(DISCOVERY, headers=bearer(value)).status_code == 200


def test_feedback_and_unknown_paths_under_cds_services_need_a_token(client, refusal):
    for path in (PATIENT_VIEW + "/feedback", "/cds-services/no-such-service"):
        response = client.post(path, json={"feedback": []})
        assert response.status_code == 401
        assert response.get_data() == refusal


def test_preflight_openapi_and_errors_keep_cors_without_a_token(client):
    preflight = client.options(PATIENT_VIEW, headers={
        "Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"]
    assert client.get("/openapi.json").status_code == 200
    refused = client.get(DISCOVERY, headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"]  # the browser may read the 401


def test_development_mode_accepts_unsigned_calls():
    app = create_app(Settings(), clock=lambda: ANCHOR)
    response = app.test_client().post(PATIENT_VIEW, json=REFERENCE)
    assert response.status_code == 200


def test_public_base_url_is_the_audience_behind_a_proxy(tmp_path):
    settings = load_settings(write_config(
        tmp_path, CLIENTS, 'public_base_url = "https://cds.hospital.example/"'))
    client = create_app(settings).test_client()
    public = token(aud="https://cds.hospital.example/cds-services")
    seen_by_flask = token(aud=BASE + DISCOVERY)
    assert client.get(DISCOVERY, headers=bearer(public)).status_code == 200
    assert client.get(DISCOVERY, headers=bearer(seen_by_flask)).status_code == 401


def test_a_config_without_clients_refuses_everything(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        app = create_app(load_settings(write_config(tmp_path, "")))
    assert "no trusted clients configured" in caplog.text
    assert app.test_client().get(DISCOVERY, headers=bearer(token())).status_code == 401


# --- replay cache shared by workers ------------------------------------------------------------

def test_a_token_used_on_one_worker_is_refused_on_another(tmp_path):
    settings = load_settings(write_config(tmp_path, CLIENTS))
    worker_1 = create_app(settings).test_client()
    worker_2 = create_app(settings).test_client()
    value = token()
    assert worker_1.get(DISCOVERY, headers=bearer(value)).status_code == 200
    assert worker_2.get(DISCOVERY, headers=bearer(value)).status_code == 401
    assert (tmp_path / "instance" / "jwt-replay.sqlite3").is_file()


def _race(path: str, jtis: list[str], results) -> None:
    # Exactly-once is the point here, not the 50 ms busy timeout (after which the service falls
    # back): a loaded test machine must not turn a wait into an error.
    cache = ReplayCache(Path(path), busy_timeout_seconds=5.0)
    now = time.time()
    results.put([jti for jti in jtis if cache.first_use(EHR, jti, now + 300, now)])


def test_concurrent_processes_accept_each_jti_exactly_once(tmp_path):
    jtis = [f"jti-{n}" for n in range(60)]
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=_race, args=(str(tmp_path / "r.sqlite3"), jtis, results))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    accepted = [jti for _ in workers for jti in results.get(timeout=20)]
    for worker in workers:
        worker.join(timeout=20)
    assert sorted(accepted) == sorted(jtis)


def test_expired_jtis_are_pruned_and_may_not_block_forever(tmp_path):
    cache = ReplayCache(tmp_path / "r.sqlite3", prune_every_seconds=0)
    assert cache.first_use(EHR, "a", expires_at=100.0, now=50.0)
    assert not cache.first_use(EHR, "a", expires_at=100.0, now=99.0)
    assert cache.first_use(EHR, "b", expires_at=500.0, now=200.0)  # prunes "a"
    assert cache.count() == 1
    assert cache.first_use(EHR, "a", expires_at=600.0, now=200.0)


# --- keys fetched from the configured jku --------------------------------------------------------

class JwksServer:
    """A JWK Set on 127.0.0.1, counting requests; /redirect answers 302, /slow stalls."""

    def __init__(self):
        self.jwks: dict = {"keys": []}
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits += 1
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "/jwks.json")
                    self.end_headers()
                    return
                if self.path == "/slow":
                    time.sleep(0.6)
                body = json.dumps(server.jwks).encode()
                self.send_response(200 if self.path in ("/jwks.json", "/slow") else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:  # the client gave up (the timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def jwks_server(monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with JwksServer() as server:
        yield server


def test_keys_are_fetched_from_the_configured_jku_and_cached(tmp_path, jwks_server):
    jwks_server.jwks = jwk_set((Keys.ec384, "k1"))
    clients = f'[[clients]]\niss = "{EHR}"\njku = "{jwks_server.url}/jwks.json"\n'
    client = create_app(load_settings(write_config(tmp_path, clients))).test_client()
    for _ in range(3):
        assert client.get(DISCOVERY, headers=bearer(token(kid="k1"))).status_code == 200
    assert jwks_server.hits == 1
    renamed = token(kid="k1", headers={"jku": f"{jwks_server.url}/other.json"})
    assert client.get(DISCOVERY, headers=bearer(renamed)).status_code == 401
    assert jwks_server.hits == 1  # a token cannot choose where keys come from


def test_unknown_kid_refetches_at_most_once_per_cooldown(jwks_server):
    now = [1000.0]
    keys = KeySets(refetch_cooldown_seconds=60, monotonic=lambda: now[0])
    client = TrustedClient(iss=EHR, jku=f"{jwks_server.url}/jwks.json")
    jwks_server.jwks = jwk_set((Keys.ec384, "k1"))
    assert keys.key_for(client, "k1", "ES384").key_id == "k1"
    jwks_server.jwks = jwk_set((Keys.ec384, "k1"), (Keys.rsa2048, "k2"))  # the issuer rotates
    with pytest.raises(KeyNotFound):
        keys.key_for(client, "k2", "RS384")  # within the cooldown: no refetch
    assert jwks_server.hits == 1
    now[0] += 61
    assert keys.key_for(client, "k2", "RS384").key_id == "k2"  # refetched once
    assert jwks_server.hits == 2
    for _ in range(5):  # a burst of made-up kids costs the issuer nothing
        with pytest.raises(KeyNotFound):
            keys.key_for(client, f"made-up-{_}", "ES384")
    assert jwks_server.hits == 2
    assert keys.key_for(client, "k1", "ES384").key_id == "k1"  # cached keys keep working
    now[0] += 61
    with pytest.raises(KeyNotFound):
        keys.key_for(client, "still-unknown", "ES384")
    assert jwks_server.hits == 3


def test_redirects_from_the_jku_are_not_followed(jwks_server):
    jwks_server.jwks = jwk_set((Keys.ec384, "k1"))
    keys = KeySets()
    with pytest.raises(KeyNotFound):
        keys.key_for(TrustedClient(iss=EHR, jku=f"{jwks_server.url}/redirect"), "k1", "ES384")
    assert jwks_server.hits == 1


def test_a_stalled_jku_fails_within_the_timeout(jwks_server):
    jwks_server.jwks = jwk_set((Keys.ec384, "k1"))
    keys = KeySets(timeout_seconds=0.2)
    started = time.perf_counter()
    with pytest.raises(KeyNotFound):
        keys.key_for(TrustedClient(iss=EHR, jku=f"{jwks_server.url}/slow"), "k1", "ES384")
    assert time.perf_counter() - started < 0.5


def test_private_key_members_in_a_jwk_set_are_ignored():
    pair = {**ECAlgorithm.to_jwk(Keys.ec384, as_dict=True), "kid": "pair"}
    assert "d" in pair
    key = KeySets().key_for(TrustedClient(iss=EHR, jwks={"keys": [pair]}), "pair", "ES384")
    assert isinstance(key.key, ec.EllipticCurvePublicKey)


# --- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("entry, says", [
    ('algorithms = ["HS256"]', "algorithms"),
    ('algorithms = ["none"]', "algorithms"),
    ("algorithms = []", "algorithms"),
    ('jku = "http://keys.example.org/jwks.json"', "https"),
])
def test_unsafe_client_settings_are_refused_at_start(tmp_path, entry, says):
    clients = f'[[clients]]\niss = "{EHR}"\njwks_file = "ehr-jwks.json"\n{entry}\n'
    with pytest.raises(ConfigError, match=says):
        load_settings(write_config(tmp_path, clients))


def test_a_repeated_issuer_is_refused(tmp_path):
    clients = f'[[clients]]\niss = "{EHR}"\njwks_file = "ehr-jwks.json"\n' * 2
    with pytest.raises(ConfigError, match="repeats"):
        load_settings(write_config(tmp_path, clients))


def test_security_settings_are_read_from_the_file(tmp_path):
    settings = load_settings(write_config(
        tmp_path, CLIENTS, "jwt_leeway_seconds = 5\njwks_refetch_cooldown_seconds = 300"))
    assert settings.jwt_leeway_seconds == 5
    assert settings.jwks_refetch_cooldown_seconds == 300
    assert settings.instance_dir == (tmp_path / "instance").resolve()
    sandbox = next(c for c in settings.clients if c.iss == SANDBOX)
    assert sandbox.algorithms == ("ES384",) and sandbox.jku == SANDBOX_JKU


# --- cds-service keys --------------------------------------------------------------------------

def _pasted_block(output: str) -> str:
    lines = output.splitlines()
    start = lines.index("[[clients]]")
    end = lines.index("", start)
    return "\n".join(lines[start:end])


def test_keys_prints_a_sandbox_block_that_loads_and_verifies_sandbox_tokens(tmp_path):
    result = CliRunner().invoke(main, ["keys"])
    assert result.exit_code == 0, result.output
    block = _pasted_block(result.output)
    spec = tomllib.loads(block)["clients"][0]
    assert spec["iss"] == SANDBOX and spec["jku"] == SANDBOX_JKU
    assert spec["algorithms"] == ["ES384"]
    (tmp_path / spec["jwks_file"]).write_text(json.dumps(jwk_set((Keys.ec384, SANDBOX_KID))))
    config = tmp_path / "service.toml"
    config.write_text(f'instance_dir = "instance"\npublic_base_url = "{BASE}"\n' + block)
    client = create_app(load_settings(config)).test_client()
    value = token(iss=SANDBOX, kid=SANDBOX_KID, headers={"jku": SANDBOX_JKU})
    assert client.get(DISCOVERY, headers=bearer(value)).status_code == 200


def test_keys_for_another_client_lists_the_saved_keys(tmp_path):
    (tmp_path / "epic.json").write_text(json.dumps(jwk_set((Keys.rsa2048, "epic-2024"))))
    config = tmp_path / "service.toml"
    result = CliRunner().invoke(main, [
        "keys", "--iss", EPIC, "--jwks-file", "epic.json", "--algorithm", "RS384",
        "--tenant", "org-1", "--fhir-server", "https://fhir.example.org/r4",
        "--config", str(config)])
    assert result.exit_code == 0, result.output
    spec = tomllib.loads(_pasted_block(result.output))["clients"][0]
    assert spec == {"iss": EPIC, "jwks_file": "epic.json", "algorithms": ["RS384"],
                    "tenant": "org-1", "fhir_servers": ["https://fhir.example.org/r4"]}
    assert "kid=epic-2024 RSA" in result.output
    assert "jku" in result.output  # tells the operator what to do if tokens carry one


# --- hostile tokens ----------------------------------------------------------------------------

def _signed_raw(payload_text: str) -> str:
    """An ES384 token signed by a trusted key over payload text json.dumps could not produce."""
    header = b64(json.dumps({"alg": "ES384", "typ": "JWT", "kid": "ec-1"}).encode())
    signing_input = f"{header}.{b64(payload_text.encode())}"
    signature = jwt.get_algorithm_by_name("ES384").sign(signing_input.encode(), Keys.ec384)
    return f"{signing_input}.{b64(signature)}"


@pytest.mark.parametrize("exp", ["NaN", "Infinity", "-Infinity", "1e999", "1" + "0" * 400])
def test_non_finite_or_overflowing_times_are_refused_even_when_signed(exp, client, refusal):
    now = int(time.time())
    payload = (f'{{"iss": "{EHR}", "aud": "{BASE + DISCOVERY}", "iat": {now}, "exp": {exp}, '
               f'"jti": "{uuid.uuid4()}"}}')
    response = client.get(DISCOVERY, headers=bearer(_signed_raw(payload)))
    assert response.status_code == 401
    assert response.get_data() == refusal


JSON_JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=3), max_leaves=8)
HEADERS = st.fixed_dictionaries({}, optional={
    "alg": st.sampled_from(["ES384", "RS384", "none", "HS256", "ES256"]) | JSON_JUNK,
    "kid": st.sampled_from(["ec-1", "rsa-1", ""]) | JSON_JUNK,
    "jku": st.sampled_from([SANDBOX_JKU, "http://127.0.0.1:1/"]) | JSON_JUNK,
    "crit": JSON_JUNK, "b64": JSON_JUNK, "typ": JSON_JUNK})
CLAIMS = st.fixed_dictionaries({}, optional={
    "iss": st.sampled_from([EHR, SANDBOX, TENANTED]) | JSON_JUNK,
    "aud": st.just(BASE + DISCOVERY) | JSON_JUNK,
    "exp": st.integers() | JSON_JUNK, "iat": st.integers() | JSON_JUNK,
    "nbf": JSON_JUNK, "jti": st.text(max_size=8) | JSON_JUNK, "tenant": JSON_JUNK})


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(header=HEADERS | JSON_JUNK, claims=CLAIMS | JSON_JUNK,
       signature=st.binary(max_size=120), raw=st.text(max_size=40))
def test_forged_or_junk_tokens_are_always_a_clean_refusal(secured_app, header, claims,
                                                          signature, raw):
    verifier = auth_of(secured_app).verifier
    forged = ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()),
                       b64(signature)])
    for authorization in (f"Bearer {forged}", f"Bearer {raw}", raw):
        with pytest.raises(AuthenticationRequired):
            verifier.verify(authorization, BASE + DISCOVERY)


def test_a_token_used_on_one_host_is_refused_on_another_sharing_the_database(tmp_path):
    """Two replicas (own instance folders) with one configured database share the replay
    cache: a token replayed against the other replica is refused."""
    shared = f'database_url = "sqlite:///{tmp_path / "shared.sqlite3"}"'
    replicas = []
    for name in ("replica-a", "replica-b"):
        folder = tmp_path / name
        folder.mkdir()
        app = create_app(load_settings(write_config(folder, CLIENTS, top=shared)),
                         clock=lambda: ANCHOR)
        replicas.append(app.test_client())
    value = token()
    assert replicas[0].get(DISCOVERY, headers=bearer(value)).status_code == 200
    assert replicas[1].get(DISCOVERY, headers=bearer(value)).status_code == 401
    assert replicas[1].get(DISCOVERY, headers=bearer(token())).status_code == 200


# --- issue 12: the audience comes from configuration only ----------------------------------------

def test_production_mode_without_public_base_url_refuses_to_start(tmp_path):
    """Before, aud was checked against the Host header: a token minted for any URL the caller
    names in Host was accepted."""
    config = tmp_path / "service.toml"
    config.write_text('instance_dir = "instance"\n' + CLIENTS)
    (tmp_path / "ehr-jwks.json").write_text(json.dumps(jwk_set((Keys.ec384, "ec-1"))))
    for name in ("sandbox-jwks.json", "epic-jwks.json", "es256-jwks.json"):
        (tmp_path / name).write_text(json.dumps(jwk_set((Keys.ec384, "x"))))
    with pytest.raises(ConfigError, match="public_base_url"):
        create_app(load_settings(config))
    result = CliRunner().invoke(main, ["serve", "--config", str(config)])
    assert result.exit_code != 0 and "public_base_url" in result.output


def test_host_and_forwarded_headers_cannot_choose_the_audience(client, refusal):
    elsewhere = "https://other-service.example/cds-services"
    response = client.get(DISCOVERY, headers={
        **bearer(token(aud=elsewhere)), "Host": "other-service.example",
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "other-service.example"})
    assert response.status_code == 401


@pytest.mark.parametrize("aud", [BASE + DISCOVERY + "#fragment", "http://user@localhost/cds-services",
                                 "http://evil.example@localhost/cds-services"])
def test_an_aud_with_a_fragment_or_user_is_refused(client, aud, refusal):
    assert client.get(DISCOVERY, headers=bearer(token(aud=aud))).status_code == 401


@pytest.mark.parametrize("url", ["https://user@cds.example/", "https://cds.example/#x",
                                 "ftp://cds.example/", "cds.example", "https://cds.example/?a=1"])
def test_a_public_base_url_that_is_not_a_plain_url_is_refused(tmp_path, url):
    with pytest.raises(ConfigError, match="public_base_url"):
        load_settings(write_config(tmp_path, CLIENTS, f'public_base_url = "{url}"'))
