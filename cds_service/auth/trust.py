"""What `cds-service keys` prints: how to trust a client, with a `[[clients]]` block to paste."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from cds_service.ops.config import DEFAULT_ALGORITHMS

SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")


def _toml(value: str | list[str]) -> str:
    # JSON strings and arrays of strings are valid TOML values.
    return json.dumps(value)


def client_block(iss: str, *, jwks_file: str | None, jku: str | None,
                 algorithms: tuple[str, ...], tenant: str | None,
                 fhir_servers: tuple[str, ...]) -> str:
    lines = ["[[clients]]", f"iss = {_toml(iss)}"]
    if jwks_file:
        lines.append(f"jwks_file = {_toml(jwks_file)}")
    if jku:
        lines.append(f"jku = {_toml(jku)}")
    if tuple(algorithms) != DEFAULT_ALGORITHMS:
        lines.append(f"algorithms = {_toml(list(algorithms))}")
    if tenant:
        lines.append(f"tenant = {_toml(tenant)}")
    lines.append(f"fhir_servers = {_toml(list(fhir_servers))}")
    return "\n".join(lines)


def describe_jwks(path: Path) -> list[str]:
    """One line per key in a saved JWK Set, and warnings an operator should act on."""
    try:
        jwks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"WARNING: {path} cannot be read as JSON: {exc}"]
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        return [f"WARNING: {path} is not a JWK Set (an object with a non-empty \"keys\" array)"]
    lines = []
    for key in keys:
        if not isinstance(key, dict):
            continue
        shape = key.get("kty", "?") + (f" {key['crv']}" if key.get("crv") else "")
        lines.append(f"  key kid={key.get('kid', '(none: unusable)')} {shape}"
                     + (f" alg={key['alg']}" if key.get("alg") else ""))
        if any(member in key for member in _PRIVATE_MEMBERS):
            lines.append("  WARNING: this key includes private parts; only the public part is "
                         "used, but keep private keys out of configuration files")
    return lines


def trust_instructions(iss: str = SANDBOX_ISS, *, jwks_file: str | None = None,
                       jku: str | None = None, algorithms: tuple[str, ...] = (),
                       tenant: str | None = None, fhir_servers: tuple[str, ...] = (),
                       config_dir: Path | None = None) -> str:
    sandbox = iss == SANDBOX_ISS
    if sandbox:
        jku = jku or SANDBOX_JKU
        jwks_file = jwks_file or "sandbox-jwks.json"
        algorithms = algorithms or ("ES384",)
    algorithms = algorithms or DEFAULT_ALGORITHMS
    if not jwks_file and not jku:
        jwks_file = "client-jwks.json"
    # Each step: its text, then lines printed as they are under it.
    steps: list[tuple[str, list[str]]] = []
    if jwks_file:
        source = f" (published at {jku})" if jku else " (ask its administrators)"
        saved = config_dir / jwks_file if config_dir is not None else None
        steps.append((f"Save the client's public JWK Set{source} as {jwks_file}, next to your "
                      "configuration file. Signatures are then checked with no outbound network.",
                      describe_jwks(saved) if saved is not None and saved.is_file() else []))
    if not jku:
        steps.append(("If the client's tokens carry a jku header, add jku = that URL: a token "
                      "naming a jku that is not configured is refused.", []))
    else:
        steps.append(("jku is the only URL its keys are ever fetched from (when a token's kid "
                      "is not in the saved set; at most once a minute); a token naming any "
                      "other jku is refused.", []))
    block = client_block(iss, jwks_file=jwks_file, jku=jku, algorithms=algorithms,
                         tenant=tenant, fhir_servers=fhir_servers)
    steps.append(("Paste this block into the configuration file (TOML):",
                  ["", *block.splitlines(), ""]))
    steps.append(("List in fhir_servers the FHIR base URLs this client sends as fhirServer: "
                  "only those are ever queried, and only when prefetch is incomplete.", []))
    steps.append(("Tokens must name in aud the exact URL called, e.g. "
                  "https://cds.example.org/cds-services/calciphylaxis-patient-view; behind a "
                  "proxy, set public_base_url to the base URL clients use.", []))
    steps.append(("Start with `cds-service serve --config FILE`: every /cds-services call then "
                  "needs a valid signed JWT (401 otherwise; the log says why).", []))
    out = [f"How to trust the CDS client {iss}", ""]
    for number, (text, lines) in enumerate(steps, start=1):
        out.append(_wrap(f"{number}. {text}", indent="   "))
        out += lines
    if sandbox:
        out += ["", _wrap("In the Sandbox (https://sandbox.cds-hooks.org), add the discovery "
                          "URL https://<your host>/cds-services under CDS Services; it signs "
                          "ES384 JWTs with the key above.")]
    return "\n".join(out)


def _wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(text, 92, subsequent_indent=indent, break_on_hyphens=False,
                         break_long_words=False)
