"""Kubernetes manifests: schema-valid, the engine's exact arguments, GPUs from tensor parallelism, no secrets."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from core.plan import parse_plan
from deploy.launcher import ServerCommand
from deploy.render import kubernetes as k8s
from deploy.servers import server_commands

K8S_VERSION = kubernetes_validate.latest_version()  # the newest schemas the package ships
SENTINEL = "sk-ridgeline-SENTINEL-7f3a9c"
HF_SENTINEL = "hf_SENTINEL_token_4d2e"

FOUR = """
name: int4-ridge
backend: vllm
model: llama-3-8b
api_key_env: RL_TEST_API_KEY
variants:
  - {name: fp16, model: meta-llama/Meta-Llama-3-8B-Instruct}
  - {name: awq, model: hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4}
  - {name: gptq, model: TechxGenus/Meta-Llama-3-8B-Instruct-GPTQ}
  - {name: awq+fp8kv, model: hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4,
     env: {VLLM_LOGGING_LEVEL: INFO, HF_TOKEN: "%s"}}
sweep: {concurrency: [1, 8, 64]}
kubernetes:
  namespace: ridgeline-test
  locust_workers: 3
  hf_token_secret: hf-token
""" % HF_SENTINEL

TP2 = """
name: tp2
backend: vllm
variants:
  - {name: bf16-tp2, preset: bf16, model: meta-llama/Meta-Llama-3-70B-Instruct,
     extra_args: ["--tensor-parallel-size", "2", "--max-model-len", "8192"]}
  - {name: awq-tp2, preset: awq, model: hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4,
     extra_args: ["--tensor-parallel-size", "2"]}
kubernetes:
  model_cache: {kind: hostPath, host_path: /mnt/models}
  locust_workers: 0
  vllm_image: registry.example.com/vllm-openai:pinned
"""


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("RL_TEST_API_KEY", SENTINEL)
    return SENTINEL


def _render(text, tmp_path):
    plan = parse_plan(text, "plan.yaml")
    files = k8s.render_kubernetes(plan, tmp_path / "k8s")
    return plan, files


def _docs(files):
    return {p: yaml.safe_load(p.read_text()) for p in files}


def _check_podmonitor(doc, by_name):
    """PodMonitor is a CRD the schemas do not hold: check its shape and that it selects the server's pods."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PodMonitor"
    dep = by_name[("Deployment", doc["metadata"]["name"])]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    sel = doc["spec"]["selector"]["matchLabels"]
    assert sel.items() <= pod_labels.items()
    ports = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    (ep,) = doc["spec"]["podMetricsEndpoints"]
    assert ep["port"] in ports and ep["path"] == "/metrics"
    relabel = ep["relabelings"][0]
    assert relabel["targetLabel"] == "variant"
    assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_annotation_ridgeline_io_variant_name"]


def _check_kustomization(path, doc):
    assert doc["kind"] == "Kustomization"
    for res in doc["resources"]:
        target = path.parent / res
        assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{path}: {res} is missing"


@pytest.mark.parametrize("text", [FOUR, TP2], ids=["four-variants", "tensor-parallel-2"])
def test_every_manifest_validates(text, tmp_path, api_key):
    plan, files = _render(text, tmp_path)
    docs = _docs(files)
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs.values() if "metadata" in d}
    kinds = {}
    for path, doc in docs.items():
        kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
        if doc["kind"] == "Kustomization":
            _check_kustomization(path, doc)
        elif doc["kind"] == "PodMonitor":
            _check_podmonitor(doc, by_name)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    n = len(plan.variants)
    assert kinds["PodMonitor"] == n
    assert kinds["Service"] == n + (2 if plan.kubernetes.locust_workers else 1)
    assert kinds["Job"] == 1 and kinds["ConfigMap"] == 1
    # every variant folder and the load side are in the top kustomization
    top = yaml.safe_load((tmp_path / "k8s" / "kustomization.yaml").read_text())
    assert sum(r.startswith("variants/") for r in top["resources"]) == n
    assert {"load/locust", "load/run", "namespace.yaml"} <= set(top["resources"])


def _strip_host_port(argv):
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
        elif tok in ("--host", "--port"):
            skip = True
        elif tok.split("=")[0] not in ("--host", "--port"):
            out.append(tok)
    return out


def _deployments(docs):
    return {d["metadata"]["annotations"]["ridgeline.io/variant-name"]: d
            for d in docs.values() if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("vllm-")}


@pytest.mark.parametrize("text", [FOUR, TP2], ids=["four-variants", "tensor-parallel-2"])
def test_engine_arguments_are_the_servers_own(text, tmp_path, api_key):
    plan, files = _render(text, tmp_path)
    deps = _deployments(_docs(files))
    cmds = server_commands(plan)
    assert set(deps) == {c.variant for c in cmds}
    for cmd in cmds:
        c = deps[cmd.variant]["spec"]["template"]["spec"]["containers"][0]
        in_pod = c["command"] + c["args"]
        # the pod listens on every address at the plan's port; nothing else differs, token for token
        assert in_pod[-4:] == ["--host", "0.0.0.0", "--port", str(plan.kubernetes.port)]
        here = _strip_host_port(cmd.argv)
        assert c["args"][:-4] == here[len(c["command"]):]
        assert Path(here[0]).name.startswith("python") == (c["command"][0] == "python3")
        assert c["command"][1:] == here[1:len(c["command"])]


def test_tensor_parallel_two_requests_two_gpus(tmp_path, api_key):
    plan, files = _render(TP2, tmp_path)
    for name, dep in _deployments(_docs(files)).items():
        c = dep["spec"]["template"]["spec"]["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
        assert c["resources"]["requests"]["nvidia.com/gpu"] == 2
        assert c["image"] == "registry.example.com/vllm-openai:pinned"
        vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        assert vols["model-cache"]["hostPath"]["path"] == "/mnt/models"
        assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    assert not (tmp_path / "k8s" / "model-cache.yaml").exists()  # a host path needs no claim
    assert not (tmp_path / "k8s" / "load" / "run" / "worker-deployment.yaml").exists()  # no workers asked


def test_four_variants_one_gpu_each_probes_and_labels(tmp_path, api_key):
    plan, files = _render(FOUR, tmp_path)
    docs = _docs(files)
    deps = _deployments(docs)
    services = {d["metadata"]["name"]: d for d in docs.values() if d["kind"] == "Service"}
    for variant, dep in deps.items():
        tmpl = dep["spec"]["template"]
        c = tmpl["spec"]["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert c["image"] == f"vllm/vllm-openai:v{plan.kubernetes.vllm_version}"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
        assert tmpl["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert tmpl["metadata"]["labels"]["app.kubernetes.io/name"] == "ridgeline"
        assert tmpl["metadata"]["labels"]["ridgeline.io/variant"] == k8s.k8s_name(variant)
        svc = services[dep["metadata"]["name"]]
        assert svc["spec"]["selector"].items() <= tmpl["metadata"]["labels"].items()
        assert "CUDA_VISIBLE_DEVICES" not in {e["name"] for e in c["env"]}
    # the exact name survives where label values cannot hold it
    assert deps["awq+fp8kv"]["metadata"]["name"].startswith("vllm-awq-fp8kv-")


def test_no_secret_value_in_any_rendered_file(tmp_path, api_key, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_SENTINEL)
    plan, files = _render(FOUR, tmp_path)
    for path in files:
        text = path.read_text()
        assert SENTINEL not in text, path
        assert HF_SENTINEL not in text, path
    deps = _deployments(_docs(files))
    env = {e["name"]: e for e in deps["awq+fp8kv"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "ridgeline-api-key", "key": "api-key"}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"  # the plan's Secret wins
    assert [e["name"] for e in deps["awq+fp8kv"]["spec"]["template"]["spec"]["containers"][0]["env"]].count(
        "HF_TOKEN") == 1
    assert env["VLLM_LOGGING_LEVEL"] == {"name": "VLLM_LOGGING_LEVEL", "value": "INFO"}
    job = yaml.safe_load((tmp_path / "k8s" / "load" / "run" / "job.yaml").read_text())
    run_env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert run_env[k8s.KEY_ENV]["valueFrom"]["secretKeyRef"]["name"] == "ridgeline-api-key"


def test_a_key_that_reaches_the_argv_becomes_a_reference(tmp_path, api_key):
    plan = parse_plan(FOUR, "plan.yaml")
    cmds = [ServerCommand(v.name, ["/usr/bin/python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "m",
                                   "--api-key", SENTINEL, "--host", "127.0.0.1", "--port", "8123"])
            for v in plan.variants]
    files = k8s.render_kubernetes(plan, tmp_path / "k8s", commands=cmds)
    assert not any(SENTINEL in p.read_text() for p in files)
    dep = _deployments(_docs(files))["fp16"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["args"][:4] == ["--model", "m", "--api-key",
                                                                           "$(VLLM_API_KEY)"]


def test_the_cluster_plan_runs_external_against_the_services(tmp_path, api_key):
    plan, files = _render(FOUR, tmp_path)
    cm = yaml.safe_load((tmp_path / "k8s" / "load" / "run" / "plan-configmap.yaml").read_text())
    inner = parse_plan(cm["data"]["plan.yaml"], "configmap")
    assert inner.backend == "external"
    assert inner.output_dir == "/results"
    assert inner.workers == 3
    assert inner.api_key_env == k8s.KEY_ENV and inner.api_key_file is None
    assert [v.url for v in inner.variants] == [
        f"http://{k8s.server_name(v.name)}.ridgeline-test.svc:8000" for v in plan.variants]
    assert inner.sweep == plan.sweep and inner.scenario == plan.scenario
    assert inner.telemetry.dcgm_labels == {}  # no exporter given: nothing to filter
    with_dcgm = parse_plan(FOUR + "telemetry: {dcgm_url: 'dcgm-exporter.gpu-operator:9400'}\n", "plan.yaml")
    tel = k8s.cluster_plan(with_dcgm)["telemetry"]
    assert tel["dcgm_labels"] == {"namespace": "ridgeline\\-test", "pod": k8s.POD_PATTERN}
    job = yaml.safe_load((tmp_path / "k8s" / "load" / "run" / "job.yaml").read_text())
    spec = job["spec"]["template"]["spec"]
    assert spec["containers"][0]["command"] == ["ridgeline", "run", "/etc/ridgeline/plan.yaml", "--quiet"]
    assert spec["initContainers"][0]["command"][3:] == [v.url for v in inner.variants]
    claims = {v["name"]: v for v in spec["volumes"]}
    assert claims["results"]["persistentVolumeClaim"]["claimName"] == "ridgeline-results"
    workers = yaml.safe_load((tmp_path / "k8s" / "load" / "run" / "worker-deployment.yaml").read_text())
    assert workers["spec"]["replicas"] == 3
    loop = workers["spec"]["template"]["spec"]["containers"][0]["command"]
    assert loop[:2] == ["sh", "-c"] and "loadtest.distributed worker --master-host ridgeline-runner" in loop[2]
    locust = yaml.safe_load((tmp_path / "k8s" / "load" / "locust" / "worker-deployment.yaml").read_text())
    assert locust["spec"]["replicas"] == 3
    cmd = locust["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:4] == ["locust", "-f", "scenarios/locustfile.py", "--worker"]


def test_names_are_dns_labels_and_clashes_are_refused(tmp_path):
    assert k8s.k8s_name("awq") == "awq"
    for odd in ("awq+fp8kv", "AWQ", "fp16_v2", "8bit", "x" * 64):
        n = k8s.k8s_name(odd)
        assert len(n) <= 40 and n[0].isalpha() and set(n) <= set("abcdefghijklmnopqrstuvwxyz0123456789-"), n
    assert k8s.k8s_name("AWQ") != k8s.k8s_name("awq")
    plan = parse_plan("backend: vllm\nvariants: [{name: a}, {name: b}]\n")
    cmds = [ServerCommand("a", ["vllm", "serve", "m"]), ServerCommand("a", ["vllm", "serve", "m"])]
    with pytest.raises(k8s.RenderError, match="same Kubernetes name"):
        k8s.manifests(plan, cmds)
    with pytest.raises(k8s.RenderError, match="whole number"):
        k8s.manifests(plan, [ServerCommand("a", ["vllm", "serve", "m", "--tensor-parallel-size", "x"])])


def test_engine_args_helper():
    argv = ["/opt/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "m", "--host", "1.2.3.4",
            "--port=9", "--quantization", "awq_marlin"]
    assert k8s.container_command(argv) == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert k8s.engine_args(argv) == ["--model", "m", "--quantization", "awq_marlin"]
    assert k8s.container_command(["vllm", "serve", "m"]) == ["vllm", "serve"]
    assert k8s.engine_args(["vllm", "serve", "m", "--port", "1"]) == ["m"]
