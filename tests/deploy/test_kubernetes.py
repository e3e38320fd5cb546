"""deploy/k8s/: every manifest validates (strictly: no unknown field) against
the Kubernetes API schemas of the oldest supported and the newest release
(`kubernetes-validate`, offline), and the manifests agree with each other and
with the code — probes ask routes that exist on the container's port, the
settings load, the command lines parse, the Service and the autoscaler reach
the server, one worker, the shared model volume. (No cluster runs here.)"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .files import (
    K8S,
    dockerfile_stages,
    env_pairs,
    parse_cli,
    probe_statuses,
    settings_from,
    unknown_variables,
)

#: The oldest Kubernetes release the manifests promise to fit, and the newest known.
VERSIONS = ("1.29.0", kubernetes_validate.latest_version() + ".0")

Doc = dict[str, Any]


def manifests() -> list[tuple[Path, Doc]]:
    """Every document of every manifest (the kustomization excepted)."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def one(kind: str, name: str) -> Doc:
    found = [d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod(deployment: Doc) -> Doc:
    spec: Doc = deployment["spec"]["template"]["spec"]
    return spec


def container(deployment: Doc) -> Doc:
    containers = pod(deployment)["containers"]
    assert len(containers) == 1
    found: Doc = containers[0]
    return found


def workloads() -> list[Doc]:
    return [d for _, d in manifests() if d["kind"] in ("Deployment", "Job")]


def environment() -> dict[str, str]:
    """The variables the ConfigMap and the Secret give every container."""
    env = dict(one("ConfigMap", "sieve-settings")["data"])
    secret = one("Secret", "sieve-secrets")
    env |= secret.get("stringData", {})
    env |= {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    return env


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(version: str) -> None:
    problems = []
    for path, doc in manifests():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{path.name}: {e.path}: {e.message}")
    assert not problems, "\n".join(problems)


def test_the_validator_finds_an_unknown_field() -> None:
    doc = json.loads(json.dumps(one("Deployment", "sieve-server")))
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["path"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    images = {i["name"] for i in kustomization["images"]}
    assert {container(w)["image"] for w in workloads()} <= images
    namespace = kustomization["namespace"]
    for _, doc in manifests():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]


def test_settings_are_known_and_load(monkeypatch: pytest.MonkeyPatch) -> None:
    env = environment()
    assert not unknown_variables(env), f"not settings: {unknown_variables(env)}"
    settings = settings_from(env, monkeypatch)
    assert settings.cache_url.startswith("redis://"), "replicas share a Redis cache"
    assert settings.store_url.startswith("postgresql://"), "and one PostgreSQL store"
    for workload in workloads():
        refs = container(workload)["envFrom"]
        assert {"configMapRef": {"name": "sieve-settings"}} in refs
        assert {"secretRef": {"name": "sieve-secrets"}} in refs


def test_command_lines_parse() -> None:
    entrypoint = json.loads(dockerfile_stages()[-1].last("ENTRYPOINT"))
    assert entrypoint == ["sieve"]
    ran = {}
    for workload in workloads():
        c = container(workload)
        assert "command" not in c, "the image's entrypoint (sieve) stays"
        ran[workload["metadata"]["name"]] = parse_cli(c["args"])[0]
    assert ran == {"sieve-server": "serve", "sieve-worker": "worker", "sieve-migrate": "migrate"}


def test_server_probes_ask_routes_on_the_served_port(tmp_path: Path) -> None:
    server = container(one("Deployment", "sieve-server"))
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    port = int(environment()["SIEVE_PORT"])
    assert ports == {"http": port}
    image_env: dict[str, str] = {}
    for args in dockerfile_stages()[-1].all("ENV"):
        image_env.update(env_pairs(args))
    assert str(port) == image_env["SIEVE_PORT"] == dockerfile_stages()[-1].last("EXPOSE")
    probes = {k: server[k]["httpGet"] for k in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == "/ready"
    assert probes["livenessProbe"]["path"] == "/health"
    for probe in probes.values():
        assert probe["port"] in ("http", port)
    # a fresh service without a model: alive, not ready (not a missing route)
    assert probe_statuses(["/health", "/ready"], tmp_path) == {"/health": 200, "/ready": 503}


def test_service_and_autoscaler_reach_the_server_only() -> None:
    deployment = one("Deployment", "sieve-server")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one("Service", "sieve")
    selector = service["spec"]["selector"]
    assert selector.items() <= labels.items()
    for other in workloads():
        if other["metadata"]["name"] != "sieve-server":
            other_labels = other["spec"]["template"]["metadata"]["labels"]
            assert not selector.items() <= other_labels.items(), other["metadata"]["name"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}
    hpa = one("HorizontalPodAutoscaler", "sieve-server")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": "sieve-server",
    }
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    pdb = one("PodDisruptionBudget", "sieve-server")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["minAvailable"] < hpa["minReplicas"], "a node drain can proceed"


def test_selectors_match_their_pods() -> None:
    for deployment in (d for d in workloads() if d["kind"] == "Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), deployment["metadata"]["name"]


def test_one_worker_never_two() -> None:
    worker = one("Deployment", "sieve-worker")["spec"]
    assert worker["replicas"] == 1
    assert worker["strategy"]["type"] == "Recreate", "a rollout must not overlap two workers"


def test_every_container_has_requests_limits_and_no_root() -> None:
    final = dockerfile_stages()[-1]
    uid = int(final.last("USER").partition(":")[0])
    for workload in workloads():
        name = workload["metadata"]["name"]
        resources = container(workload)["resources"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[bound]), f"{name}: {bound}"
        security = pod(workload)["securityContext"]
        assert security["runAsNonRoot"] and security["runAsUser"] == uid, name
        assert container(workload)["securityContext"]["allowPrivilegeEscalation"] is False


def test_models_are_one_shared_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    pvc = one("PersistentVolumeClaim", "sieve-models")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "pods on several nodes share it"
    model_dir = str(settings_from(environment(), monkeypatch).model_dir)
    for name in ("sieve-server", "sieve-worker"):
        deployment = one("Deployment", name)
        volumes = {v["name"]: v for v in pod(deployment)["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
        assert model_dir in mounts, f"{name}: {model_dir} is not mounted"
        claim = volumes[mounts[model_dir]]["persistentVolumeClaim"]["claimName"]
        assert claim == "sieve-models", name
