"""The deployment files, validated offline as the development machine allows (docs/deploy.md):
the compose file by Debian's docker-compose (`make compose` installs it), the Kubernetes
manifests against the API schemas by kubernetes-validate, and what each promises: a
health check and the shared folders where they are needed, GPUs for the trainer and
vLLM, an HPA for web and the generate workers, and only FactLoop's own settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.conftest import FACTLOOP_VARS, REPO, clean_env
from tests.webapp.test_settings_documented import variables_read_by_settings

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES = "1.32.0"  # the oldest API the manifests are checked against (autoscaling/v2 is GA from 1.23)
COMPOSE_ENV = {"SECRET_KEY": "s" * 50, "POSTGRES_PASSWORD": "pw", "FACTLOOP_BASE_MODEL": "/srv/factloop/models/base"}
LONG_RUNNING = {"db", "redis", "web", "worker-generate", "worker-export", "worker-train", "vllm"}


def _compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "no docker-compose: `make compose` installs Debian's"
    return subprocess.run(
        [binary, "-f", str(DEPLOY / "compose.yaml"), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_compose_file_validates_and_defines_every_service() -> None:
    assert _compose("config", "-q", env=clean_env(**COMPOSE_ENV)).returncode == 0
    missing = _compose("config", "-q", env=clean_env(**{**COMPOSE_ENV, "SECRET_KEY": ""}))
    assert missing.returncode != 0 and "SECRET_KEY" in missing.stderr  # a required secret is refused, not defaulted

    rendered = _compose("config", env=clean_env(**COMPOSE_ENV))
    assert rendered.returncode == 0, rendered.stderr
    services: dict[str, Any] = yaml.safe_load(rendered.stdout)["services"]
    assert set(services) == LONG_RUNNING | {"migrate", "beat", "flower", "proxy"}
    for name in LONG_RUNNING:
        assert "healthcheck" in services[name], name
    queues = {s["command"][s["command"].index("-Q") + 1] for s in services.values() if "-Q" in (s.get("command") or [])}
    assert queues == {"generate", "export", "train"}  # one worker per queue (webapp/celery.py)
    for name in ("worker-train", "vllm"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], name

    def mounts(name: str) -> dict[str, str]:  # docker-compose 1.29 writes "volume:/path[:ro]"
        return dict(volume.split(":")[:2] for volume in services[name]["volumes"])

    # An adapter path FactLoop sends vLLM must exist there: the model volume at one path everywhere.
    assert mounts("vllm")["models"] == mounts("worker-train")["models"] == mounts("web")["models"]
    assert mounts("web")["media"] == mounts("worker-generate")["media"]
    for service in services.values():
        unknown = set(service.get("environment") or {}) - variables_read_by_settings()
        assert not unknown or service["image"].startswith(("postgres", "vllm/", "nginx")), unknown


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name in ("kustomization.yaml", "vllm-stack-values.yaml"):
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def test_every_kubernetes_manifest_validates_against_the_api_schemas() -> None:
    import kubernetes_validate  # type: ignore[import-untyped]

    manifests = _manifests()
    for name, doc in manifests:
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']}: {error.message}")
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {name for name, _ in manifests}  # nothing left out

    kinds = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in manifests}
    settings = kinds[("ConfigMap", "factloop-settings")]["data"]
    assert set(settings) <= set(FACTLOOP_VARS) | variables_read_by_settings()  # FactLoop's own settings only
    secrets = kinds[("Secret", "factloop-secrets")]["stringData"]
    assert {"SECRET_KEY", "DATABASE_URL"} <= set(secrets) and not {"SECRET_KEY", "DATABASE_URL"} & set(settings)
    autoscalers = [doc for (kind, _), doc in kinds.items() if kind == "HorizontalPodAutoscaler"]
    scaled = {doc["spec"]["scaleTargetRef"]["name"] for doc in autoscalers}
    assert scaled == {"factloop-web", "factloop-worker-generate"}
    trainer = kinds[("Deployment", "factloop-worker-train")]["spec"]["template"]["spec"]
    assert trainer["nodeSelector"] and trainer["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
    claims = {doc["metadata"]["name"] for (kind, _), doc in kinds.items() if kind == "PersistentVolumeClaim"}
    assert {"factloop-models", "factloop-media", "factloop-training", "factloop-exports"} <= claims

    values = yaml.safe_load((K8S / "vllm-stack-values.yaml").read_text())
    for spec in values["servingEngineSpec"]["modelSpec"]:  # each engine serves "base" with LoRA on
        assert {"--served-model-name", "base", "--enable-lora"} <= set(spec["vllmConfig"]["extraArgs"])
        assert spec["extraVolumeMounts"][0]["mountPath"] == "/srv/factloop/models"


def test_a_broken_manifest_is_caught() -> None:
    """The check can fail: a Deployment without its selector is refused."""
    import kubernetes_validate

    deployment = next(doc for _, doc in _manifests() if doc["kind"] == "Deployment")
    broken = {**deployment, "spec": {k: v for k, v in deployment["spec"].items() if k != "selector"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_web_app_sits_behind_a_buffering_proxy_everywhere_it_ships() -> None:
    """gunicorn's threads are held by slow clients: compose and Kubernetes put nginx in front
    (its template bounds headers' and bodies' time and size, and lets only the import routes
    stream large bodies), gunicorn runs threads, and the app counts the proxy as trusted."""
    from django.urls import reverse

    from webapp.middleware import IMPORT_ROUTES

    template = (K8S / "proxy" / "default.conf.template").read_text()
    for directive in ("client_header_timeout", "client_body_timeout", "client_max_body_size 1m"):
        assert directive in template
    imports = re.search(r"location ~ \^/\((.+)\)\$", template)
    assert imports, "no location for the import routes"
    paths = [reverse(f"admin:{route}" if route.startswith("annotation_") else route) for route in IMPORT_ROUTES]
    assert sorted(imports.group(1).split("|")) == sorted(p.lstrip("/") for p in paths)  # the app's two import routes

    rendered = yaml.safe_load(_compose("config", env=clean_env(**COMPOSE_ENV)).stdout)["services"]
    assert "ports" not in rendered["web"] and rendered["proxy"]["ports"]  # only the proxy is published
    assert "gthread" in rendered["web"]["command"]
    assert rendered["web"]["environment"]["FACTLOOP_TRUSTED_PROXIES"] == "1"

    kinds = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in _manifests()}
    pod = kinds[("Deployment", "factloop-web")]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert "127.0.0.1:8000" in containers["web"]["command"] and "gthread" in containers["web"]["command"]
    assert containers["proxy"]["ports"][0]["containerPort"] == 8080
    assert kinds[("Service", "web")]["spec"]["ports"][0]["targetPort"] == 8080
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["configMapGenerator"][0]["files"] == ["proxy/default.conf.template"]
    assert kinds[("ConfigMap", "factloop-settings")]["data"]["FACTLOOP_TRUSTED_PROXIES"] == "1"
    assert "gthread" in (DEPLOY / "docker" / "app.Dockerfile").read_text()


def test_the_dockerfiles_copy_what_they_install_from_and_the_images_are_named_alike() -> None:
    for name in ("app.Dockerfile", "trainer.Dockerfile"):
        text = (DEPLOY / "docker" / name).read_text()
        for copied in re.findall(r"^COPY (?:--chown=\S+ )?(\S+)", text, flags=re.MULTILINE):
            assert copied == "." or (REPO / copied).exists(), (name, copied)
        assert "-c constraints.txt" in text  # the pinned set
    pinned = (REPO / "deploy" / "serving" / "requirements-cuda.txt").read_text()
    vllm = re.search(r"^vllm==(\S+)", pinned, flags=re.MULTILINE)
    assert vllm and f"vllm/vllm-openai:v{vllm.group(1)}" in (DEPLOY / "compose.yaml").read_text()
    assert f'tag: "v{vllm.group(1)}"' in (K8S / "vllm-stack-values.yaml").read_text()
