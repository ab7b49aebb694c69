"""Kubernetes manifests for a plan: one vLLM Deployment per variant, the load side, and a run Job.

    <out>/kustomization.yaml                 everything below (kubectl apply -k <out>)
    <out>/namespace.yaml, model-cache.yaml   the namespace and the checkpoint cache claim
    <out>/variants/<name>/                   Deployment, Service, PodMonitor, kustomization.yaml
    <out>/load/locust/                       a plain Locust master (web UI) and its workers
    <out>/load/run/                          the plan (ConfigMap), the results claim, the
                                             `ridgeline run` Job, its Locust workers and Service

The engine arguments come from `deploy.servers.server_commands(plan)`, the one place that turns a
plan into vLLM argv, minus `--host` and `--port` (a pod listens on 0.0.0.0 and the plan's
kubernetes.port). API keys and tokens are never written here: containers read them from Secrets.
Labels `app.kubernetes.io/name=ridgeline` and `ridgeline.io/variant=<name>` select the pods, and
the PodMonitor copies the exact variant name into the `variant` label the Grafana dashboard uses.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import sys
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from core.errors import RidgelineError
from core.hardware.catalog import catalog_model
from core.parallel import ParallelSizeError, gpus_per_replica
from core.plan import PlanError, load_plan
from core.secrets import is_secret_name, read_api_key
from deploy import cpu_split
from deploy.launcher import ServerCommand
from deploy.servers import server_commands

PART_OF = "ridgeline"
VARIANT_LABEL = "ridgeline.io/variant"
VARIANT_ANNOTATION = "ridgeline.io/variant-name"  # the exact name (label values cannot hold every name)
PLAN_MOUNT = "/etc/ridgeline"
PLAN_FILE = "plan.yaml"
RESULTS_MOUNT = "/results"
KEY_ENV = "RIDGELINE_API_KEY"  # the run Job's key variable (the plan in the ConfigMap names it)
VLLM_KEY_ENV = "VLLM_API_KEY"  # vLLM requires this key on /v1 when it is set
SERVER_ENV_SECRET = "ridgeline-server-env"  # where credential-like server variables are read from
MASTER_PORT = 5557
LOCUST_WEB_PORT = 8089
_HOST_PORT_FLAGS = {"--host", "--port"}
POD_PATTERN = "vllm-{k8s_name}-[a-z0-9]+-[a-z0-9]+"  # a Deployment's pod: <name>-<replica set>-<pod>
_DNS_LABEL = re.compile(r"[^a-z0-9-]+")


class RenderError(RidgelineError, ValueError):
    """A plan that cannot be rendered for Kubernetes; the message says what and where."""


# --- names --------------------------------------------------------------------------------------

def model_warnings(plan: Any) -> list[str]:
    """Variants whose model is a catalogue name: a vLLM pod cannot load it (it needs a hub id or a path)."""
    out = []
    for v in plan.variants:
        m = str(v.model or plan.model)
        if catalog_model(m) is not None and not Path(m).exists():
            out.append(f"variant {v.name}: model {m!r} is a name from ridgeline's catalogue, not a checkpoint; the "
                       f"pod's vLLM needs a Hugging Face id or a path in the model cache (variants[].model)")
    return out


def k8s_name(name: str, limit: int = 40) -> str:
    """A DNS label from a variant or run name: lower case, '-' for anything else, a hash if changed.

    The hash keeps two names that differ only in case or punctuation (awq+fp8kv, awq.fp8kv) apart.
    """
    base = _DNS_LABEL.sub("-", name.lower()).strip("-")
    base = re.sub(r"-{2,}", "-", base) or "x"
    if not base[0].isalpha():
        base = "v" + base
    if base == name and len(base) <= limit:
        return base
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:6]
    return f"{base[:limit - 7].rstrip('-')}-{digest}"


def _labels(plan: Any, component: str, variant: Optional[str] = None) -> dict[str, str]:
    out = {"app.kubernetes.io/name": "ridgeline", "app.kubernetes.io/instance": k8s_name(plan.name),
           "app.kubernetes.io/component": component, "app.kubernetes.io/part-of": PART_OF}
    if variant is not None:
        out[VARIANT_LABEL] = k8s_name(variant)
    return out


def _selector(labels: dict[str, str]) -> dict[str, str]:
    keep = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component", VARIANT_LABEL)
    return {k: v for k, v in labels.items() if k in keep}


def _meta(name: str, plan: Any, labels: dict[str, str], annotations: Optional[dict[str, str]] = None) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "namespace": plan.kubernetes.namespace, "labels": dict(labels)}
    if annotations:
        m["annotations"] = dict(annotations)
    return m


def server_name(variant: str) -> str:
    """The Deployment and Service name of a variant's vLLM server."""
    return "vllm-" + k8s_name(variant)


def service_url(plan: Any, variant: str) -> str:
    """The in-cluster base URL of a variant's Service."""
    return f"http://{server_name(variant)}.{plan.kubernetes.namespace}.svc:{plan.kubernetes.port}"


# --- the engine command -------------------------------------------------------------------------

def _program_length(argv: list[str]) -> int:
    """How many leading tokens are the program (python -m module, or vllm serve), not engine arguments."""
    if len(argv) >= 3 and argv[1] == "-m":
        return 3
    if len(argv) >= 2 and Path(argv[0]).name == "vllm" and argv[1] == "serve":
        return 2
    return 1


def container_command(argv: list[str]) -> list[str]:
    """The program inside the vLLM image: the host's interpreter path means nothing there."""
    prog = argv[:_program_length(argv)]
    if prog and Path(prog[0]).name.startswith("python"):
        prog = ["python3"] + prog[1:]
    return prog


def engine_args(argv: list[str]) -> list[str]:
    """The engine arguments of a server's argv, without the program and without --host/--port."""
    rest = argv[_program_length(argv):]
    out: list[str] = []
    skip = False
    for tok in rest:
        if skip:
            skip = False
            continue
        name, eq, _ = tok.partition("=")
        if name in _HOST_PORT_FLAGS:
            skip = not eq
            continue
        out.append(tok)
    return out


def _secret_values(plan: Any) -> list[str]:
    """Credentials the render must never write: the plan's API key, when it can be had here."""
    try:
        key = read_api_key(plan.api_key_env, plan.api_key_file)
    except Exception:  # noqa: BLE001 - no key here means nothing to hide
        key = None
    return [key] if key else []


def _has_key(plan: Any) -> bool:
    return bool(plan.api_key_env or plan.api_key_file)


def _pod_args(args: list[str], secrets: list[str]) -> list[str]:
    """Engine arguments with any credential value replaced by a reference to the pod's key variable."""
    out = []
    for tok in args:
        for s in secrets:
            if s and s in tok:
                tok = tok.replace(s, f"$({VLLM_KEY_ENV})")
        out.append(tok)
    return out


# --- the servers --------------------------------------------------------------------------------

def _server_env(plan: Any, cmd: ServerCommand, secrets: list[str]) -> list[dict[str, Any]]:
    k = plan.kubernetes
    env: dict[str, dict[str, Any]] = {}
    for name, value in sorted(cmd.env.items()):
        if name in ("CUDA_VISIBLE_DEVICES", VLLM_KEY_ENV):  # the device plugin picks GPUs; the key comes below
            continue
        if name == cpu_split.BIND_ENV and plan.server.cpus is not None and name not in plan.server.env:
            continue  # the host's CPU split (server.cpus) means nothing inside a pod
        if is_secret_name(name) or any(s and s in value for s in secrets):
            env[name] = {"name": name, "valueFrom": {"secretKeyRef": {"name": SERVER_ENV_SECRET, "key": name}}}
        else:
            env[name] = {"name": name, "value": value}
    if _has_key(plan):
        env[VLLM_KEY_ENV] = {"name": VLLM_KEY_ENV, "valueFrom": {"secretKeyRef": {
            "name": k.api_key_secret, "key": k.api_key_secret_key}}}
    if k.hf_token_secret:
        env["HF_TOKEN"] = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": k.hf_token_secret, "key": "token", "optional": True}}}
    return list(env.values())


def _cache_volume(plan: Any) -> dict[str, Any]:
    mc = plan.kubernetes.model_cache
    if mc.kind == "pvc":
        return {"name": "model-cache", "persistentVolumeClaim": {"claimName": mc.claim_name}}
    if mc.kind == "hostPath":
        return {"name": "model-cache", "hostPath": {"path": mc.host_path, "type": "DirectoryOrCreate"}}
    return {"name": "model-cache", "emptyDir": {}}


def _pod_extras(plan: Any) -> dict[str, Any]:
    k = plan.kubernetes
    out: dict[str, Any] = {}
    if k.node_selector:
        out["nodeSelector"] = dict(k.node_selector)
    if k.tolerations:
        out["tolerations"] = [dict(t) for t in k.tolerations]
    return out


def server_deployment(plan: Any, cmd: ServerCommand, secrets: list[str]) -> dict[str, Any]:
    k = plan.kubernetes
    labels = _labels(plan, "server", cmd.variant)
    argv = cpu_split.without_prefix(cmd.argv)  # the host's CPU split (server.cpus) means nothing inside a pod
    gpus = gpus_per_replica(argv)
    image = k.vllm_image or f"vllm/vllm-openai:v{k.vllm_version}"
    args = _pod_args(engine_args(argv), secrets) + ["--host", "0.0.0.0", "--port", str(k.port)]
    resources: dict[str, dict[str, Any]] = {kind: dict(v) for kind, v in k.resources.items()}
    resources.setdefault("limits", {})[k.gpu_resource] = gpus
    resources.setdefault("requests", {})[k.gpu_resource] = gpus
    def probe() -> dict[str, Any]:
        return {"httpGet": {"path": "/health", "port": "http"}}

    startup_checks = max(1, math.ceil(plan.server.startup_timeout_s / 10.0))
    container = {
        "name": "vllm",
        "image": image,
        "imagePullPolicy": k.image_pull_policy,
        "command": container_command(argv),
        "args": args,
        "env": _server_env(plan, cmd, secrets),
        "ports": [{"name": "http", "containerPort": k.port, "protocol": "TCP"}],
        "resources": resources,
        "startupProbe": {**probe(), "periodSeconds": 10, "failureThreshold": startup_checks},
        "readinessProbe": {**probe(), "periodSeconds": 10, "failureThreshold": 3},
        "livenessProbe": {**probe(), "periodSeconds": 20, "timeoutSeconds": 5, "failureThreshold": 3},
        "volumeMounts": [{"name": "model-cache", "mountPath": k.model_cache.mount_path},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(k.port),
                   "prometheus.io/path": "/metrics", VARIANT_ANNOTATION: cmd.variant}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(server_name(cmd.variant), plan, labels, {VARIANT_ANNOTATION: cmd.variant}),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # a rolling update would need twice the GPUs
            "selector": {"matchLabels": _selector(labels)},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {
                    **_pod_extras(plan),
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": [_cache_volume(plan),
                                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": k.shm_size}}],
                },
            },
        },
    }


def server_service(plan: Any, variant: str) -> dict[str, Any]:
    labels = _labels(plan, "server", variant)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(server_name(variant), plan, labels, {VARIANT_ANNOTATION: variant}),
        "spec": {"type": "ClusterIP", "selector": _selector(labels),
                 "ports": [{"name": "http", "port": plan.kubernetes.port, "targetPort": "http", "protocol": "TCP"}]},
    }


def pod_monitor(plan: Any, variant: str) -> dict[str, Any]:
    """For the Prometheus Operator: scrape the variant's pods, labelled with the exact variant name."""
    labels = _labels(plan, "server", variant)
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _meta(server_name(variant), plan, labels),
        "spec": {
            "selector": {"matchLabels": _selector(labels)},
            "podMetricsEndpoints": [{
                "port": "http",
                "path": "/metrics",
                "interval": plan.kubernetes.scrape_interval,
                "relabelings": [{
                    "sourceLabels": ["__meta_kubernetes_pod_annotation_ridgeline_io_variant_name"],
                    "targetLabel": "variant",
                    "action": "replace",
                }],
            }],
        },
    }


# --- storage and the namespace ------------------------------------------------------------------

def namespace(plan: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": plan.kubernetes.namespace, "labels": {"app.kubernetes.io/part-of": PART_OF}}}


def claim(plan: Any, name: str, size: str, access: str, storage_class: Optional[str], component: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": [access], "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _meta(name, plan, _labels(plan, component)), "spec": spec}


# --- the load side ------------------------------------------------------------------------------

def cluster_plan(plan: Any) -> dict[str, Any]:
    """The plan as the in-cluster Job runs it: backend external against the variants' Services."""
    k = plan.kubernetes
    d = plan.model_dump(mode="json")
    d["backend"] = "external"
    for v in d["variants"]:
        v["url"] = service_url(plan, v["name"])
        # what starts a server lives in its Deployment; the runner only talks to it
        v["gpus"], v["env"], v["extra_args"] = None, {}, []
    d["server"]["env"], d["server"]["extra_args"] = {}, []
    d["output_dir"] = RESULTS_MOUNT
    tel = d.get("telemetry") or {}
    if tel.get("dcgm_url") and not tel.get("dcgm_labels"):
        # a node's exporter reports every GPU on it: keep those of the variant's own pod
        tel["dcgm_labels"] = {"namespace": re.escape(k.namespace), "pod": POD_PATTERN}
    d["workers"] = k.locust_workers
    d["api_key_env"] = KEY_ENV if _has_key(plan) else None
    d["api_key_file"] = None
    return d


def _ridgeline_container(plan: Any, name: str, command: list[str], ports: Optional[list[dict]] = None,
                         extra_env: Optional[list[dict]] = None, mounts: Optional[list[dict]] = None) -> dict[str, Any]:
    k = plan.kubernetes
    env = list(extra_env or [])
    if _has_key(plan):
        env.append({"name": KEY_ENV, "valueFrom": {"secretKeyRef": {
            "name": k.api_key_secret, "key": k.api_key_secret_key}}})
    c: dict[str, Any] = {
        "name": name, "image": k.ridgeline_image, "imagePullPolicy": k.image_pull_policy,
        "workingDir": k.ridgeline_workdir, "command": command,
        "volumeMounts": [{"name": "plan", "mountPath": PLAN_MOUNT, "readOnly": True}] + list(mounts or []),
    }
    if env:
        c["env"] = env
    if ports:
        c["ports"] = ports
    return c


def _plan_volume() -> dict[str, Any]:
    return {"name": "plan", "configMap": {"name": "ridgeline-plan"}}


def plan_configmap(plan: Any) -> dict[str, Any]:
    text = "# the plan as the cluster runs it (rendered by ridgeline)\n" + yaml.safe_dump(cluster_plan(plan), sort_keys=False)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("ridgeline-plan", plan, _labels(plan, "plan")),
            "data": {PLAN_FILE: text}}


def _deployment(plan: Any, name: str, component: str, replicas: int, container: dict[str, Any],
                volumes: list[dict[str, Any]]) -> dict[str, Any]:
    labels = _labels(plan, component)
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, plan, labels),
            "spec": {"replicas": replicas, "selector": {"matchLabels": _selector(labels)},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [container], "volumes": volumes}}}}


def _service(plan: Any, name: str, component: str, ports: list[tuple[str, int]]) -> dict[str, Any]:
    labels = _labels(plan, component)
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, plan, labels),
            "spec": {"type": "ClusterIP", "selector": _selector(labels),
                     "ports": [{"name": n, "port": p, "targetPort": p, "protocol": "TCP"} for n, p in ports]}}


def locust_objects(plan: Any) -> dict[str, dict[str, Any]]:
    """Plain Locust with ridgeline's scenario: a master with its web UI, and workers."""
    k = plan.kubernetes
    plan_file = f"{PLAN_MOUNT}/{PLAN_FILE}"
    target = service_url(plan, plan.baseline)
    master = _ridgeline_container(
        plan, "locust-master",
        ["locust", "-f", "scenarios/locustfile.py", "--master", "--master-bind-port", str(MASTER_PORT),
         "--web-port", str(LOCUST_WEB_PORT), "--host", target, "--rl-plan", plan_file],
        ports=[{"name": "master", "containerPort": MASTER_PORT}, {"name": "web", "containerPort": LOCUST_WEB_PORT}])
    worker = _ridgeline_container(
        plan, "locust-worker",
        ["locust", "-f", "scenarios/locustfile.py", "--worker", "--master-host", "ridgeline-locust-master",
         "--master-port", str(MASTER_PORT), "--rl-plan", plan_file])
    return {
        "master-deployment.yaml": _deployment(plan, "ridgeline-locust-master", "locust-master", 1, master, [_plan_volume()]),
        "master-service.yaml": _service(plan, "ridgeline-locust-master", "locust-master",
                                        [("master", MASTER_PORT), ("web", LOCUST_WEB_PORT)]),
        "worker-deployment.yaml": _deployment(plan, "ridgeline-locust-worker", "locust-worker",
                                              k.locust_workers, worker, [_plan_volume()]),
    }


_WAIT = ("import sys, time, urllib.request\n"
         "for url in sys.argv[1:]:\n"
         "    while True:\n"
         "        try:\n"
         "            if urllib.request.urlopen(url + '/health', timeout=5).status == 200:\n"
         "                print('ready:', url, flush=True)\n"
         "                break\n"
         "        except Exception as exc:\n"
         "            print('waiting for', url, '-', exc, flush=True)\n"
         "        time.sleep(10)\n")


def run_objects(plan: Any) -> dict[str, dict[str, Any]]:
    """The `ridgeline run` Job (its pod is the Locust master), its workers, its Service and the results claim."""
    k = plan.kubernetes
    labels = _labels(plan, "runner")
    results = {"name": "results", "mountPath": RESULTS_MOUNT}
    env = []
    if k.locust_workers > 0:  # the runner's Locust master listens for workers on other pods
        env = [{"name": "RIDGELINE_MASTER_BIND", "value": f"0.0.0.0:{MASTER_PORT}"},
               {"name": "RIDGELINE_REMOTE_WORKERS", "value": "1"}]
    runner = _ridgeline_container(plan, "ridgeline", ["ridgeline", "run", f"{PLAN_MOUNT}/{PLAN_FILE}", "--quiet"],
                                  ports=[{"name": "master", "containerPort": MASTER_PORT}], extra_env=env,
                                  mounts=[results])
    wait = _ridgeline_container(plan, "wait-for-servers",
                                ["python3", "-c", _WAIT] + [service_url(plan, v.name) for v in plan.variants])
    wait.pop("volumeMounts")
    wait.pop("env", None)
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": _meta("ridgeline-run", plan, labels),
        "spec": {
            "backoffLimit": 0,  # a failed run is looked at, not repeated over the same results
            "template": {
                "metadata": {"labels": labels},
                "spec": {"restartPolicy": "Never", "initContainers": [wait], "containers": [runner],
                         "volumes": [_plan_volume(), {"name": "results",
                                                      "persistentVolumeClaim": {"claimName": k.results_claim}}]},
            },
        },
    }
    out = {
        "plan-configmap.yaml": plan_configmap(plan),
        "results-pvc.yaml": claim(plan, k.results_claim, k.results_size, "ReadWriteOnce", k.storage_class, "results"),
        "job.yaml": job,
    }
    if k.locust_workers > 0:
        out["runner-service.yaml"] = _service(plan, "ridgeline-runner", "runner", [("master", MASTER_PORT)])
        # the master exists only while the Job runs: a worker that loses it (or never found it) starts again
        # at once, rather than in the back-off a crashed container gets
        loop = (f"while true; do python3 -m loadtest.distributed worker --master-host ridgeline-runner "
                f"--master-port {MASTER_PORT}; sleep 5; done")
        worker = _ridgeline_container(plan, "ridgeline-worker", ["sh", "-c", loop])
        worker.pop("volumeMounts")
        out["worker-deployment.yaml"] = _deployment(plan, "ridgeline-run-worker", "runner-worker",
                                                    k.locust_workers, worker, [])
    return out


# --- putting it together ------------------------------------------------------------------------

def _kustomization(plan: Any, resources: list[str]) -> dict[str, Any]:
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": resources}


def manifests(plan: Any, commands: Optional[list[ServerCommand]] = None) -> dict[str, dict[str, Any]]:
    """Every file to write (relative path -> one object), from the plan and its server commands."""
    if commands is None:
        # no key at render time: the pods read it from a Secret; every port is the pod's own
        commands = server_commands(plan.model_copy(update={"backend": "vllm"}),
                                   ports={v.name: plan.kubernetes.port for v in plan.variants}, api_key=None)
    names: dict[str, str] = {}
    for cmd in commands:
        if not cmd.argv:
            raise RenderError(f"variant {cmd.variant}: no server command to run in a pod")
        n = k8s_name(cmd.variant)
        if n in names:
            raise RenderError(f"variants {names[n]!r} and {cmd.variant!r} get the same Kubernetes name {n!r}")
        names[n] = cmd.variant
        try:
            gpus_per_replica(cmd.argv)
        except ParallelSizeError as exc:
            raise RenderError(f"variant {cmd.variant}: {exc}") from None
    secrets = _secret_values(plan)
    files: dict[str, dict[str, Any]] = {"namespace.yaml": namespace(plan)}
    mc = plan.kubernetes.model_cache
    top = ["namespace.yaml"]
    if mc.kind == "pvc" and mc.create:
        files["model-cache.yaml"] = claim(plan, mc.claim_name, mc.size, mc.access_mode, mc.storage_class, "model-cache")
        top.append("model-cache.yaml")
    for cmd in commands:
        d = f"variants/{k8s_name(cmd.variant)}"
        files[f"{d}/deployment.yaml"] = server_deployment(plan, cmd, secrets)
        files[f"{d}/service.yaml"] = server_service(plan, cmd.variant)
        files[f"{d}/podmonitor.yaml"] = pod_monitor(plan, cmd.variant)
        files[f"{d}/kustomization.yaml"] = _kustomization(plan, ["deployment.yaml", "service.yaml", "podmonitor.yaml"])
        top.append(d)
    for sub, objs in (("load/locust", locust_objects(plan)), ("load/run", run_objects(plan))):
        for name, obj in objs.items():
            files[f"{sub}/{name}"] = obj
        files[f"{sub}/kustomization.yaml"] = _kustomization(plan, list(objs))
        top.append(sub)
    files["kustomization.yaml"] = _kustomization(plan, top)
    return files


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no anchors and aliases, which some tools reading manifests do not expect."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(obj: dict[str, Any]) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False)


def render_kubernetes(plan: Any, out_dir: Union[str, Path],
                      commands: Optional[list[ServerCommand]] = None) -> list[Path]:
    """Write the manifests under out_dir; returns the files written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RenderError(f"{out} exists and is not a directory")
    written = []
    for rel, obj in manifests(plan, commands).items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump(obj), encoding="utf-8")
        written.append(path)
    return written


def main(argv: Optional[list[str]] = None) -> int:
    """python -m deploy.render.kubernetes plan.yaml --out DIR"""
    ap = argparse.ArgumentParser(prog="python -m deploy.render.kubernetes",
                                 description="Write Kubernetes manifests (kustomize) for a plan.")
    ap.add_argument("plan")
    ap.add_argument("--out", default="k8s", help="directory to write (default: k8s)")
    a = ap.parse_args(argv)
    try:
        files = render_kubernetes(load_plan(a.plan), a.out)
    except (PlanError, RenderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} files under {a.out} (kubectl apply -k {a.out})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
