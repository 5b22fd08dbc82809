"""k8s/: the KubeRay manifests against the vendored KubeRay v1 schemas and the project, the generated
serveConfigV2, the image. Pure YAML / JSON-schema work: no cluster, no Ray, no Docker."""
from __future__ import annotations

import gzip
import importlib.util
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml

from trainers import k8s_serve_config as gen

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
SHARED_CRDS = REPO.parent / "shared" / "kuberay-crds"
CRDS = ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml", "ray.io_rayservices.yaml")

_spec = importlib.util.spec_from_file_location("k8s_check", K8S / "check.py")
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def broken(tmp_path: Path, name: str, mutate) -> list[str]:
    """check() of a copy of k8s/ in which ``mutate`` changed the (parsed) manifest ``name``."""
    folder = tmp_path / "k8s"
    shutil.copytree(K8S, folder, ignore=shutil.ignore_patterns("crds", "__pycache__"))
    path = folder / name
    doc = yaml.safe_load(path.read_text()) if path.exists() else None
    doc = mutate(doc) or doc
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return check.check(folder)


def head(spec: dict) -> dict:
    return spec["headGroupSpec"]["template"]["spec"]["containers"][0]


def worker(spec: dict, group: str) -> dict:
    return next(g for g in spec["workerGroupSpecs"] if g["groupName"] == group)


# ------------------------------------------------------------------ vendored schemas
@pytest.mark.skipif(not SHARED_CRDS.is_dir(), reason="../shared/kuberay-crds is not on this machine")
def test_vendored_crds_equal_the_shared_ones():
    for name in CRDS:
        with gzip.open(K8S / "crds" / f"{name}.gz", "rb") as f:
            assert f.read() == (SHARED_CRDS / name).read_bytes(), name
    assert (K8S / "crds" / "LICENSE").read_bytes() == (SHARED_CRDS / "LICENSE").read_bytes()


def test_vendored_crds_are_kuberay_v1_and_licensed():
    for kind, name in check.CRD_FILES.items():
        schema = check.crd_schema(kind)
        assert schema["type"] == "object" and {"apiVersion", "kind", "metadata", "spec"} <= set(schema["properties"])
    assert "Apache License" in (K8S / "crds" / "LICENSE").read_text()[:200]
    notice = (REPO / "THIRD_PARTY_LICENSES").read_text()
    assert "k8s/crds" in notice and "Apache-2.0" in notice and "KubeRay" in notice
    assert re.search(r'"jsonschema[<>=!~]', (REPO / "pyproject.toml").read_text().split("dev =")[1].split("\n")[0])


def test_closed_schemas_reject_what_the_published_ones_let_through():
    """The CRDs leave additionalProperties open; the API server does not. The checker closes them."""
    job = load("rayjob-loop.yaml")
    job["spec"]["backofLimit"] = 3
    raw = jsonschema.Draft7Validator(check.crd_schema("RayJob"))
    assert not list(raw.iter_errors(job))  # published schema: an unknown field passes
    assert check.schema_problems(job, "RayJob") == ["$.spec.backofLimit: unknown field (did you mean backoffLimit?)"]


# ------------------------------------------------------------------ the committed manifests
def test_committed_manifests_have_no_problems():
    assert check.check() == []
    kinds = sorted(d["kind"] for f in check.manifest_files(K8S) for d in yaml.safe_load_all(f.read_text()) if d)
    assert kinds == ["PersistentVolumeClaim", "RayCluster", "RayJob", "RayJob", "RayService", "Service"]


def test_every_ray_cluster_has_the_same_spec():
    """The RayJobs and the RayService bring up their own cluster: the RayCluster's spec, verbatim."""
    spec = load("raycluster.yaml")["spec"]
    assert load("rayjob-loop.yaml")["spec"]["rayClusterSpec"] == spec
    assert load("rayjob-sweep.yaml")["spec"]["rayClusterSpec"] == spec
    assert load("rayservice.yaml")["spec"]["rayClusterConfig"] == spec


def test_raycluster_has_a_head_and_an_autoscaling_gpu_group():
    spec = load("raycluster.yaml")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == check.pins()["ray"]
    assert spec["authOptions"] == {"mode": "token", "secretName": "reidloop-ray-auth"}
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert "nvidia.com/gpu" not in head(spec)["resources"]["limits"]
    gpu = worker(spec, "gpu")
    assert gpu["minReplicas"] < gpu["maxReplicas"]
    res = gpu["template"]["spec"]["containers"][0]["resources"]
    assert int(res["limits"]["nvidia.com/gpu"]) >= 1
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"]
    for template in [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]:
        c = template["spec"]["containers"][0]
        assert c["resources"]["limits"]["cpu"] and c["resources"]["limits"]["memory"]
        assert {"name": "reidloop-data", "mountPath": gen.DATA_ROOT} in c["volumeMounts"]


@pytest.mark.parametrize("name, module", [("rayjob-loop.yaml", "trainers.run_job"),
                                          ("rayjob-sweep.yaml", "trainers.sweep")])
def test_rayjobs_run_an_entry_point_on_their_own_cluster(name, module):
    spec = load(name)["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["backoffLimit"] >= 1
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    got, config, _ = check.parse_entrypoint(spec["entrypoint"])
    assert got == module and config.startswith(gen.APP_ROOT + "/tune_configs/")


def test_the_service_reads_what_the_job_writes():
    from reidloop.config import LoopJob, load_config

    _, config, overrides = check.parse_entrypoint(load("rayjob-loop.yaml")["spec"]["entrypoint"])
    job = load_config(LoopJob, check.image_file(config), overrides)
    app = yaml.safe_load(load("rayservice.yaml")["spec"]["serveConfigV2"])["applications"][0]
    assert app["args"]["checkpoint"] == job.output_dir
    assert job.output_dir.startswith(gen.DATA_ROOT + "/") and job.ray.storage_path.startswith(gen.DATA_ROOT + "/")
    pvc = load("pvc.yaml")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    volumes = load("raycluster.yaml")["spec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    assert {"name": "reidloop-data", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}} in volumes


# ------------------------------------------------------------------ deliberate errors
def _set(path: list, value):
    def mutate(doc):
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


def _entrypoint(old: str, new: str):
    def mutate(doc):
        assert old in doc["spec"]["entrypoint"]
        doc["spec"]["entrypoint"] = doc["spec"]["entrypoint"].replace(old, new)
    return mutate


def _serve(old: str, new: str):
    def mutate(doc):
        assert old in doc["spec"]["serveConfigV2"]
        doc["spec"]["serveConfigV2"] = doc["spec"]["serveConfigV2"].replace(old, new)
    return mutate


def _head_env(*env):
    def mutate(doc):
        head(doc["spec"]["rayClusterSpec"])["env"] = list(env)
    return mutate


def _with_port(doc, port):
    doc["metadata"]["name"] = "reidloop-serve-public"
    doc["spec"]["ports"] = [{"name": "http", "port": port, "targetPort": port}]
    return doc


GPU = ["spec", "rayClusterConfig", "workerGroupSpecs", 1]
BROKEN = {  # id: (file, mutation, what the message must name)
    "unknown field": ("rayjob-loop.yaml", _set(["spec", "backofLimit"], 3), ["$.spec.backofLimit: unknown field"]),
    "unknown nested field": (
        "rayservice.yaml", _set(GPU + ["template", "spec", "containers", 0, "imagePullPolicyy"], "Always"),
        ["$.spec.rayClusterConfig.workerGroupSpecs[1].template.spec.containers[0].imagePullPolicyy: unknown field"]),
    "wrong type": ("raycluster.yaml", _set(["spec", "workerGroupSpecs", 1, "maxReplicas"], "four"),
                   ["$.spec.workerGroupSpecs[1].maxReplicas", "'four' is not of type 'integer'"]),
    "bad enum": ("rayservice.yaml", _set(["spec", "rayClusterConfig", "autoscalerOptions", "upscalingMode"], "Fast"),
                 ["$.spec.rayClusterConfig.autoscalerOptions.upscalingMode: 'Fast' is not one of"]),
    "unknown submission mode": ("rayjob-sweep.yaml", _set(["spec", "submissionMode"], "K8sJob"),
                                ["$.spec.submissionMode: 'K8sJob' is not one of K8sJobMode"]),
    "metadata typo": ("rayjob-loop.yaml", _set(["metadata", "lables"], {"a": "b"}),
                      ["$.metadata.lables: unknown field"]),
    "missing entry point": ("rayjob-loop.yaml", _entrypoint("trainers.run_job", "trainers.run_jobs"),
                            ["$.spec.entrypoint", "trainers.run_jobs: no such module"]),
    "missing config file": ("rayjob-sweep.yaml", _entrypoint("sweep_synthetic.yaml", "sweep_synthetik.yaml"),
                            ["$.spec.entrypoint", "sweep_synthetik.yaml: no such file"]),
    "config outside the image": ("rayjob-loop.yaml", _entrypoint(gen.APP_ROOT + "/tune_configs", "tune_configs"),
                                 ["$.spec.entrypoint", "'tune_configs/synthetic.yaml' is not a file of the image"]),
    "unknown override": ("rayjob-loop.yaml", _entrypoint("ray.train_workers=2", "ray.train_worker=2"),
                         ["$.spec.entrypoint", "ray.train_worker: unknown key"]),
    "output off the volume": ("rayjob-loop.yaml", _entrypoint("output_dir=/data/runs", "output_dir=/tmp/runs"),
                              ["$.spec.entrypoint", "output_dir='/tmp/runs/synthetic' is not on the shared volume"]),
    "missing serve import": ("rayservice.yaml", _serve(":build_app", ":build_ap"),
                             ["$.spec.serveConfigV2.applications[0].import_path", "defines no build_ap"]),
    "missing serve config": ("rayservice.yaml", _serve("tune_configs/serve.yaml", "tune_configs/serv.yaml"),
                             ["$.spec.serveConfigV2.applications[0].args", "serv.yaml: no such file"]),
    "token in an env var": ("rayjob-loop.yaml", _head_env({"name": "RAY_AUTH_TOKEN", "value": "0123abcd"}),
                            ["$.spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].env[0]",
                             "RAY_AUTH_TOKEN has its value in plain text"]),
    "token in the runtime env": (
        "rayjob-sweep.yaml", _set(["spec", "runtimeEnvYAML"], "env_vars:\n  RAY_AUTH_TOKEN: 0123abcd\n"),
        ["$.spec.runtimeEnvYAML.env_vars.RAY_AUTH_TOKEN", "secret in plain text"]),
    "token on the command line": ("rayjob-loop.yaml", _entrypoint("python -m", "RAY_AUTH_TOKEN=0123abcd python -m"),
                                  ["$.spec.entrypoint: RAY_AUTH_TOKEN=... is a secret in plain text"]),
    "token in the serve config": ("rayservice.yaml", _serve("  deployments:", "  runtime_env:\n    env_vars:\n"
                                                            "      MY_API_KEY: 0123abcd\n  deployments:"),
                                  ["$.spec.serveConfigV2.applications[0].runtime_env.env_vars.MY_API_KEY"]),
    "auth off": ("raycluster.yaml", _set(["spec", "authOptions", "mode"], "disabled"),
                 ["$.spec.authOptions.mode", "token authentication must be on"]),
    "auth off in an env var": ("rayjob-loop.yaml", _head_env({"name": "RAY_AUTH_MODE", "value": "disabled"}),
                               ["containers[0].env[0]", "RAY_AUTH_MODE=disabled"]),
    "no token secret": ("rayservice.yaml", _set(["spec", "rayClusterConfig", "authOptions"], {"mode": "token"}),
                        ["$.spec.rayClusterConfig.authOptions.secretName"]),
    "public head service": ("raycluster.yaml", _set(["spec", "headGroupSpec", "serviceType"], "LoadBalancer"),
                            ["$.spec.headGroupSpec.serviceType", "stays ClusterIP"]),
    "public serve service": ("rayservice.yaml", _set(["spec", "serveService"], {"spec": {"type": "NodePort"}}),
                             ["$.spec.serveService.spec.type", "plain HTTP"]),
    "volume not mounted": ("rayjob-sweep.yaml",
                           _set(["spec", "rayClusterSpec", "workerGroupSpecs", 0, "template", "spec", "containers", 0,
                                 "volumeMounts"], []),
                           ["$.spec.rayClusterSpec.workerGroupSpecs[0].template.spec", "at /data"]),
    "ray version drift": ("rayjob-loop.yaml", _set(["spec", "rayClusterSpec", "rayVersion"], "2.59.0"),
                          ["$.spec.rayClusterSpec.rayVersion", "ray==2.60.0"]),
    "single-node volume": ("pvc.yaml", _set(["spec", "accessModes"], ["ReadWriteOnce"]), ["ReadWriteMany"]),
    "secret with data": ("secret.yaml", lambda d: {"apiVersion": "v1", "kind": "Secret",
                                                   "metadata": {"name": "reidloop-ray-auth"},
                                                   "stringData": {"auth_token": "0123abcd"}},
                         ["Secret reidloop-ray-auth", "never goes in a manifest"]),
    "load balancer outside expose/": ("dashboard-lb.yaml", lambda d: load("expose/dashboard.yaml"),
                                      ["dashboard-lb.yaml", "$.spec.type", "belongs in expose/"]),
    "serve exposed": ("expose/serve.yaml", lambda d: _with_port(load("expose/dashboard.yaml"), 8000),
                      ["expose/serve.yaml", "exposes Serve (8000)", "plain HTTP"]),
    "haproxy front without its variables": (
        "rayservice.yaml", _serve("token_file: /etc", "front: haproxy\n    token_file: /etc"),
        ["$.spec.rayClusterConfig.headGroupSpec.template.spec.containers[0].env", "front: haproxy",
         "RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1"]),
    "open load balancer": ("expose/dashboard.yaml", _set(["spec", "loadBalancerSourceRanges"], ["0.0.0.0/0"]),
                           ["$.spec.loadBalancerSourceRanges"]),
}
@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_a_deliberate_error_is_named(case, tmp_path):
    name, mutate, expected = BROKEN[case]
    problems = broken(tmp_path, name, mutate)
    hits = [p for p in problems if p.startswith(f"k8s/{name}") and all(e in p for e in expected)]
    assert hits, f"{case}: nothing names {expected} in k8s/{name}:\n" + "\n".join(problems)
    assert all(p.startswith(f"k8s/{name}") for p in problems), problems  # the other files stay clean


def test_the_haproxy_front_passes_once_every_ray_container_has_its_variables(tmp_path):
    from services.serve_front import HAPROXY_ENV

    def haproxy(doc):
        _serve("token_file: /etc", "front: haproxy\n    token_file: /etc")(doc)
        cluster = doc["spec"]["rayClusterConfig"]
        for _, template in check.pod_templates(cluster, []):
            container = template["spec"]["containers"][0]
            container["env"] = [*container.get("env", []), *({"name": k, "value": v} for k, v in HAPROXY_ENV.items())]

    assert broken(tmp_path, "rayservice.yaml", haproxy) == []

    def one_group_missed(doc):  # the GPU workers' pods would start replicas HAProxy cannot know of
        haproxy(doc)
        doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["env"] = [
            {"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"}]

    problems = broken(tmp_path / "again", "rayservice.yaml", one_group_missed)
    assert len(problems) == 1 and "workerGroupSpecs[1].template.spec.containers[0].env" in problems[0], problems
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED=1" in problems[0] and "RAY_SERVE_ENABLE_HA_PROXY" not in problems[0]


def test_the_cli_reports_and_fails(tmp_path, capsys):
    check.main([str(K8S)])
    assert "no problems" in capsys.readouterr().out
    folder = tmp_path / "k8s"
    shutil.copytree(K8S, folder, ignore=shutil.ignore_patterns("crds", "__pycache__"))
    text = (folder / "rayjob-loop.yaml").read_text()
    (folder / "rayjob-loop.yaml").write_text(text.replace("  backoffLimit: 2\n", "  backoffLimit: 2\n  retries: 1\n"))
    with pytest.raises(SystemExit, match="1 problem"):
        check.main([str(folder)])
    assert "k8s/rayjob-loop.yaml: RayJob reidloop-loop: $.spec.retries: unknown field" in capsys.readouterr().out


# ------------------------------------------------------------------ generated serveConfigV2
def test_committed_serve_config_is_the_generated_one():
    assert gen.committed(K8S / "rayservice.yaml") == gen.render(gen.serve_config())
    gen.main(["--check"])


def test_generator_substitutes_the_cluster_paths_and_auth():
    cfg = gen.serve_config()
    app = cfg["applications"][0]
    source = yaml.safe_load(gen.SOURCE.read_text())["applications"][0]
    assert app["import_path"] == source["import_path"] and app["deployments"] == source["deployments"]
    assert app["args"]["config"] == f"{gen.APP_ROOT}/{source['args']['config']}"
    assert app["args"]["checkpoint"] == f"{gen.DATA_ROOT}/{source['args']['checkpoint']}"
    assert cfg["http_options"]["host"] == "0.0.0.0"
    assert "RAY_AUTH_MODE" not in gen.render(cfg)


def test_generator_maps_a_user_config_checkpoint_and_drops_only_the_auth_variable(tmp_path):
    source = yaml.safe_load(gen.SOURCE.read_text())
    app = source["applications"][0]
    app["runtime_env"] = {"env_vars": {"RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "2"}}
    app["deployments"][1]["user_config"] = {"checkpoint": "runs/other/model.pt"}
    (tmp_path / "serve_deploy.yaml").write_text(yaml.safe_dump(source))
    out = gen.serve_config(tmp_path / "serve_deploy.yaml")["applications"][0]
    assert out["runtime_env"] == {"env_vars": {"OMP_NUM_THREADS": "2"}}
    assert out["deployments"][1]["user_config"]["checkpoint"] == f"{gen.DATA_ROOT}/runs/other/model.pt"


def test_a_drifted_serve_config_fails_the_check_and_is_regenerated_in_place(tmp_path):
    manifest = tmp_path / "rayservice.yaml"
    original = (K8S / "rayservice.yaml").read_text()
    manifest.write_text(original.replace("max_ongoing_requests: 256", "max_ongoing_requests: 128"))
    with pytest.raises(SystemExit, match="rayservice.yaml: serveConfigV2 differs"):
        gen.main(["--check", "--manifest", str(manifest)])
    gen.main(["--manifest", str(manifest)])
    assert manifest.read_text() == original  # only the block changed back; comments and the rest kept


# ------------------------------------------------------------------ the image
def test_dockerfile_builds_on_the_pinned_ray_and_torch():
    assert check.dockerfile_problems() == []
    text = (K8S / "Dockerfile").read_text()
    pin = check.pins()
    assert f"FROM rayproject/ray:{pin['ray']}-" in text and "ray-ml" not in text.split("FROM", 1)[1]
    assert f'"torch=={pin["torch"]}"' in text and f'"torchvision=={pin["torchvision"]}"' in text
    assert (K8S / "Dockerfile.dockerignore").read_text().count(".venv") >= 1


@pytest.mark.parametrize("old, new, message", [
    ("FROM rayproject/ray:2.60.0-${RAY_VARIANT}", "FROM rayproject/ray-ml:2.60.0-gpu", "FROM rayproject/ray-ml"),
    ("FROM rayproject/ray:2.60.0-${RAY_VARIANT}", "FROM rayproject/ray:2.59.0-${RAY_VARIANT}", "rayproject/ray:2.59.0"),
    ('"torch==2.14.1"', '"torch>=2.14"', "pins torch==2.14.1"),
    ('"torchvision==0.29.1"', "torchvision", "pins torchvision==0.29.1"),
    ("ENV PIP_NO_CACHE_DIR=1", "ENV RAY_AUTH_TOKEN=0123abcd PIP_NO_CACHE_DIR=1", "ENV RAY_AUTH_TOKEN"),
    ("ARG TORCH_INDEX_URL=", "ARG HF_TOKEN=hf_0123\nARG TORCH_INDEX_URL=", "ARG HF_TOKEN"),
    ("RUN pip install", "RUN curl -LsSf https://astral.sh/uv/install.sh | sh\nRUN pip install", "curl | sh"),
    ("WORKDIR /home/ray/reidloop", "WORKDIR /app", "WORKDIR must be /home/ray/reidloop"),
])
def test_a_broken_dockerfile_is_named(old, new, message, tmp_path):
    text = (K8S / "Dockerfile").read_text()
    assert old in text
    (tmp_path / "Dockerfile").write_text(text.replace(old, new, 1))
    problems = check.dockerfile_problems(tmp_path / "Dockerfile")
    assert any(message in p and p.startswith("Dockerfile: ") for p in problems), problems


def test_readme_walks_through_every_step():
    text = (K8S / "README.md").read_text()
    for step in ("docker build -f k8s/Dockerfile", "docker push", "kubectl create secret generic reidloop-ray-auth",
                 "kubectl apply -f k8s/pvc.yaml", "kubectl apply -f k8s/rayjob-loop.yaml", "kubectl get rayjob",
                 "kubectl logs", "kubectl apply -f k8s/rayservice.yaml", "port-forward svc/reidloop-serve-serve-svc",
                 "/search", "kubectl cp", "kubectl create secret generic reidloop-serve-token", "python -m trainers.k8s_serve_config", "python k8s/check.py"):
        assert step in text, step
