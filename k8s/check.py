"""Checks the Kubernetes manifests in k8s/ without a cluster:  python k8s/check.py [FOLDER]

* Ray resources (RayCluster, RayJob, RayService) against the KubeRay v1 schemas vendored in k8s/crds/.
  Like the API server, every object schema that lists its properties is closed: an unknown field is an
  error (the CRDs' few CEL rules are not evaluated).
* What they name exists: a RayJob's entrypoint is `python -m MODULE` of this repository, its --config a
  file of it inside the image (APP_ROOT) and its --set overrides load with the project's own config
  loader; a Serve application's import path is defined and its args load as a ServeConfig.
* Security: token authentication from a Secret on every Ray cluster, no secret-looking value in plain
  text, no RAY_AUTH_MODE other than token; Services are ClusterIP, except opt-in ones under expose/,
  and none of those may expose Serve (its bearer token travels in plain HTTP: TLS must come first).
* Serve's HTTP front: an app with ``front: haproxy`` only on a cluster whose every Ray container has Ray's
  high-throughput variables in its env (services/serve_front.py).
* Storage: every Ray pod mounts the folder's PersistentVolumeClaim at DATA_ROOT, and what the jobs
  write and the service reads lies on it.

Each problem is one line naming the file, the resource, the JSON path and what is wrong.
"""
from __future__ import annotations

import ast
import difflib
import functools
import gzip
import re
import shlex
import sys
from pathlib import Path

import jsonschema
import yaml

K8S = Path(__file__).resolve().parent
REPO = K8S.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from trainers.k8s_serve_config import APP_ROOT, DATA_ROOT  # noqa: E402

CRDS = K8S / "crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml.gz", "RayJob": "ray.io_rayjobs.yaml.gz",
             "RayService": "ray.io_rayservices.yaml.gz"}
CLUSTER_SPEC = {"RayCluster": ("spec",), "RayJob": ("spec", "rayClusterSpec"),
                "RayService": ("spec", "rayClusterConfig")}
OTHER_KINDS = ("PersistentVolumeClaim", "Service", "Ingress", "Secret")
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")  # KubeRay's rayjob_types.go
EXPOSE_DIR = "expose"
SERVE_PORT = 8000

SECRET_WORD = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL", re.I)
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
# NAME=literal in a command line (NAME=$VAR is fine: the value comes from elsewhere)
INLINE_SECRET = re.compile(r"\b([A-Z0-9_]*(?:TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY)[A-Z0-9_]*)"
                           r"=(?![\"']?\$)\S")
AUTH_OFF = re.compile(r"RAY_AUTH_MODE\s*[=:]\s*[\"']?(?!token\b)\w+", re.I)
# metadata is `type: object` in the CRDs; the API server checks it as ObjectMeta. The fields used here:
METADATA = {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
    "name": {"type": "string", "pattern": r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$"},
    "namespace": {"type": "string"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}


def pins() -> dict[str, str]:
    """``name -> version`` of every ``name==version`` requirement in pyproject.toml."""
    text = (REPO / "pyproject.toml").read_text()
    return dict(re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^";\s]+)"', text))


def json_path(parts) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


# ------------------------------------------------------------------ schemas
def closed(schema):
    """``schema`` with ``additionalProperties: false`` on every object schema that lists ``properties``
    (unless it preserves unknown fields), as Kubernetes treats structural schemas."""
    if not isinstance(schema, dict):
        return schema
    s = dict(schema)
    if isinstance(s.get("properties"), dict):
        s["properties"] = {k: closed(v) for k, v in s["properties"].items()}
        if not s.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in s:
            s["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(s.get(key), dict):
            s[key] = closed(s[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(s.get(key), list):
            s[key] = [closed(x) for x in s[key]]
    return s


@functools.lru_cache(maxsize=None)
def crd_schema(kind: str, folder: Path = CRDS) -> dict:
    """The v1 openAPIV3Schema of ``kind``'s CRD (vendored, gzipped), as published."""
    with gzip.open(folder / CRD_FILES[kind], "rt", encoding="utf-8") as f:
        crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


@functools.lru_cache(maxsize=None)
def validator(kind: str) -> jsonschema.Draft7Validator:
    s = closed(crd_schema(kind))
    s["properties"] = {**s["properties"], "metadata": METADATA}
    return jsonschema.Draft7Validator(s)


def schema_problems(doc: dict, kind: str) -> list[str]:
    out = []
    for err in validator(kind).iter_errors(doc):
        path = list(err.absolute_path)
        if err.validator == "additionalProperties" and err.validator_value is False:
            known = list(err.schema.get("properties", {}))
            for extra in sorted(set(err.instance) - set(known)):
                near = difflib.get_close_matches(str(extra), known, n=1)
                out.append(f"{json_path(path + [extra])}: unknown field"
                           + (f" (did you mean {near[0]}?)" if near else ""))
        else:
            out.append(f"{json_path(path)}: {err.message}")
    return out


# ------------------------------------------------------------------ what the manifests name
def module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for p in (base.with_suffix(".py"), base / "__main__.py", base / "__init__.py"):
        if module and p.is_file():
            return p
    return None


def top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def image_file(path: str | None) -> Path:
    """The repository file behind ``path`` inside the image (absolute, under APP_ROOT)."""
    if not path or not path.startswith(APP_ROOT + "/"):
        raise ValueError(f"{path!r} is not a file of the image: give it as {APP_ROOT}/<path in this repository>")
    p = REPO / path[len(APP_ROOT) + 1:]
    if not p.is_file():
        raise ValueError(f"{path}: no such file in this repository ({p.relative_to(REPO)})")
    return p


def _loop(config: Path, overrides: list[str]) -> dict:
    from reidloop.config import LoopJob, load_config

    job = load_config(LoopJob, config, overrides)
    return {"output_dir": job.output_dir, "ray.storage_path": job.ray.storage_path, "data.root": job.data.root}


def _sweep(config: Path, overrides: list[str]) -> dict:
    from reidloop.config.sweep import load_sweep

    sweep = load_sweep(config, overrides)
    return {"storage_path": sweep.config.storage_path, "data.root": (sweep.base.get("data") or {}).get("root")}


def _serve(config: Path, overrides: list[str]) -> dict:
    from reidloop.config import load_config
    from reidloop.config.serve import ServeConfig

    return {"checkpoint": load_config(ServeConfig, config, overrides).checkpoint}


# entry point -> its config loader, returning the paths it writes or reads (they must be on the volume)
ENTRY_POINTS = {"trainers.run_job": _loop, "trainers.sweep": _sweep, "trainers.serve": _serve}


def config_problems(load, config: str | None, overrides: list[str]) -> list[str]:
    from reidloop.config import ConfigError

    try:
        paths = load(image_file(config), overrides)
    except (ValueError, OSError, ConfigError) as exc:
        return [str(exc)]
    return [f"{key}={value!r} is not on the shared volume: give a path under {DATA_ROOT}/"
            for key, value in paths.items()
            if value is not None and "://" not in str(value) and not f"{value}/".startswith(f"{DATA_ROOT}/")]


def parse_entrypoint(text: str) -> tuple[str, str | None, list[str]]:
    """``python -m MODULE --config FILE --set K=V ...`` -> (MODULE, FILE, [K=V, ...]); ValueError otherwise."""
    argv = shlex.split(text or "")
    if len(argv) < 3 or argv[0] not in ("python", "python3") or argv[1] != "-m":
        raise ValueError("must be one command `python -m MODULE --config FILE [--set KEY=VALUE ...]`")
    module, config, overrides, rest = argv[2], None, [], iter(argv[3:])
    for arg in rest:
        if arg in (";", "&&", "||", "|", "&"):
            raise ValueError(f"one command only, no `{arg}`")
        if arg in ("--config", "--set"):
            value = next(rest, None)
            if value is None:
                raise ValueError(f"{arg} without a value")
            arg = f"{arg}={value}"
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg.startswith("--set="):
            overrides.append(arg.split("=", 1)[1])
    return module, config, overrides


def entrypoint_problems(text: str) -> list[str]:
    try:
        module, config, overrides = parse_entrypoint(text)
    except ValueError as exc:
        return [str(exc)]
    path = module_file(module)
    if path is None:
        return [f"entry point {module}: no such module in this repository"]
    if "__main__" not in path.read_text():
        return [f"entry point {module}: {path.relative_to(REPO)} has no `if __name__ == \"__main__\"`"]
    if module in ENTRY_POINTS:
        return [f"entry point {module}: {p}" for p in config_problems(ENTRY_POINTS[module], config, overrides)]
    if config is not None:
        try:
            image_file(config)
        except ValueError as exc:
            return [f"entry point {module}: {exc}"]
    return []


def serve_config_problems(cfg) -> list[tuple[list, str]]:
    if not isinstance(cfg, dict) or not cfg.get("applications"):
        return [([], "no applications")]
    out = []
    for i, app in enumerate(cfg["applications"]):
        at = ["applications", i]
        target = str(app.get("import_path", ""))
        module, _, attr = target.partition(":") if ":" in target else target.rpartition(".")
        path = module_file(module)
        if path is None:
            out.append((at + ["import_path"], f"{target}: no module {module} in this repository"))
            continue
        if attr not in top_level_names(path):
            out.append((at + ["import_path"], f"{target}: {path.relative_to(REPO)} defines no {attr}"))
        if target == "services.serve_app:build_app":  # build_app's args: config=FILE, then field overrides
            args = dict(app.get("args") or {})
            config = args.pop("config", None)
            out += [(at + ["args"], p) for p in
                    config_problems(_serve, config, [f"{k}={v}" for k, v in args.items()])]
    return out


def serve_fronts(cfg) -> set[str]:
    """The HTTP fronts (``ServeConfig.front``) the applications of a serve config ask for (those that load)."""
    from reidloop.config import ConfigError, load_config
    from reidloop.config.serve import ServeConfig

    fronts = set()
    apps = (cfg.get("applications") or []) if isinstance(cfg, dict) else []
    for app in apps:
        if app.get("import_path") != "services.serve_app:build_app":
            continue
        args = dict(app.get("args") or {})
        try:
            fronts.add(load_config(ServeConfig, image_file(args.pop("config", None)),
                                   [f"{k}={v}" for k, v in args.items()]).front)
        except (ValueError, OSError, ConfigError):
            pass  # named by serve_config_problems
    return fronts


def front_problems(cluster: dict, at: list, fronts: set[str]) -> list[tuple[list, str]]:
    """``front: haproxy`` works only where every Ray container starts with Ray's high-throughput variables
    (services/serve_front.py): Ray reads them when its processes start, so the app cannot set them itself."""
    from services.serve_front import front_env

    out = []
    for front in sorted(fronts):
        need = front_env(front, local=False)
        for where, template in pod_templates(cluster, at):
            containers = (template.get("spec") or {}).get("containers") or [{}]
            env = {e.get("name"): str(e.get("value")) for e in containers[0].get("env") or [] if isinstance(e, dict)}
            missing = [f"{k}={v}" for k, v in need.items() if env.get(k) != v]
            if missing:
                out.append((where + ["spec", "containers", 0, "env"],
                            f"the Serve app has front: {front}, which needs {' '.join(missing)} in the env of "
                            "every Ray container (Ray reads them when its processes start); add them, or set "
                            "front: ray"))
    return out


# ------------------------------------------------------------------ security and storage
def secret_problems(node, path: list) -> list[tuple[list, str]]:
    """Plain-text secrets and auth switched off, anywhere in ``node`` (env lists, env_vars maps, strings)."""
    out = []
    if isinstance(node, dict):
        name = node.get("name")
        if isinstance(name, str) and "value" in node:  # a container's env entry
            if SECRET_WORD.search(name):
                out.append((path, f"env {name} has its value in plain text: take it from a Secret "
                                  f"(valueFrom.secretKeyRef)"))
            if name == "RAY_AUTH_MODE" and str(node["value"]).lower() != "token":
                out.append((path, f"env RAY_AUTH_MODE={node['value']}: Ray token authentication must stay on"))
        for key, value in node.items():
            here = path + [key]
            if isinstance(value, str) and key in ("runtimeEnvYAML", "serveConfigV2"):
                try:
                    out += secret_problems(yaml.safe_load(value), here)
                except yaml.YAMLError:
                    pass  # reported with the resource's own checks
                continue
            if isinstance(key, str) and ENV_NAME.fullmatch(key) and isinstance(value, (str, int, float)):
                if SECRET_WORD.search(key):
                    out.append((here, f"{key} is a secret in plain text: take it from a Secret"))
                elif key == "RAY_AUTH_MODE" and str(value).lower() != "token":
                    out.append((here, f"RAY_AUTH_MODE={value}: Ray token authentication must stay on"))
                continue
            out += secret_problems(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += secret_problems(value, path + [i])
    elif isinstance(node, str):
        m = INLINE_SECRET.search(node)
        if m:
            out.append((path, f"{m.group(1)}=... is a secret in plain text: take it from a Secret"))
        m = AUTH_OFF.search(node)
        if m:
            out.append((path, f"{m.group(0)}: Ray token authentication must stay on"))
    return out


def pod_templates(spec: dict, at: list):
    yield at + ["headGroupSpec", "template"], (spec.get("headGroupSpec") or {}).get("template") or {}
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        yield at + ["workerGroupSpecs", i, "template"], group.get("template") or {}


def cluster_problems(spec: dict, at: list, pvcs: set[str], ray_version: str) -> list[tuple[list, str]]:
    out = []
    auth = spec.get("authOptions") or {}
    if auth.get("mode") != "token":
        out.append((at + ["authOptions", "mode"], "Ray token authentication must be on (authOptions.mode: token)"))
    if not auth.get("secretName"):
        out.append((at + ["authOptions", "secretName"], "name the Secret that holds the token (key auth_token)"))
    if str(spec.get("rayVersion")) != ray_version:
        out.append((at + ["rayVersion"], f"{spec.get('rayVersion')!r}: pyproject.toml pins ray=={ray_version}"))
    head = spec.get("headGroupSpec") or {}
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        out.append((at + ["headGroupSpec", "serviceType"],
                    f"{head['serviceType']}: the head Service (dashboard, Serve) stays ClusterIP; "
                    f"opt-in exposure lives in {EXPOSE_DIR}/"))
    head_svc = ((head.get("headService") or {}).get("spec") or {}).get("type", "ClusterIP")
    if head_svc != "ClusterIP":
        out.append((at + ["headGroupSpec", "headService", "spec", "type"], f"{head_svc}: must stay ClusterIP"))
    images = set()
    for where, template in pod_templates(spec, at):
        pod = template.get("spec") or {}
        containers = pod.get("containers") or [{}]
        images.add(containers[0].get("image"))
        if f"ray{ray_version}" not in str(containers[0].get("image")).rpartition(":")[2]:
            out.append((where + ["spec", "containers", 0, "image"],
                        f"{containers[0].get('image')}: tag the image with the Ray it is built on (ray{ray_version})"))
        if pod.get("hostNetwork"):
            out.append((where + ["spec", "hostNetwork"], "hostNetwork puts Ray's ports on the node"))
        for c, container in enumerate(pod.get("containers") or []):
            for p, port in enumerate(container.get("ports") or []):
                if "hostPort" in port:
                    out.append((where + ["spec", "containers", c, "ports", p, "hostPort"],
                                "exposes the port on the node"))
        claims = {v.get("name"): (v.get("persistentVolumeClaim") or {}).get("claimName")
                  for v in pod.get("volumes") or []}
        mounted = {m.get("mountPath"): m.get("name") for m in containers[0].get("volumeMounts") or []}
        if claims.get(mounted.get(DATA_ROOT)) not in pvcs:
            out.append((where + ["spec"], f"the Ray container must mount a PersistentVolumeClaim of this folder "
                                          f"({', '.join(sorted(pvcs)) or 'none found'}) at {DATA_ROOT}"))
    if len(images) > 1:
        out.append((at, f"head and workers run different images: {sorted(map(str, images))}"))
    return out


def service_problems(doc: dict, exposed_ok: bool) -> list[tuple[list, str]]:
    spec = doc.get("spec") or {}
    kind, kind_type = doc.get("kind"), spec.get("type", "ClusterIP")
    if kind == "Service" and kind_type == "ClusterIP" and not spec.get("externalIPs"):
        return []
    ports = spec.get("ports") or []
    text = yaml.safe_dump(spec)
    serve = any(p.get("port") == SERVE_PORT or p.get("targetPort") in (SERVE_PORT, "serve") or p.get("name") == "serve"
                for p in ports) or "serve-svc" in text or f"number: {SERVE_PORT}" in text
    if not exposed_ok:
        return [(["spec", "type"] if kind == "Service" else [],
                 f"{kind} {kind_type if kind == 'Service' else ''} exposes it beyond the cluster: keep Services "
                 f"ClusterIP; opt-in exposure belongs in {EXPOSE_DIR}/")]
    if serve:
        return [(["spec"], f"exposes Serve ({SERVE_PORT}), whose bearer token would travel in plain HTTP: put TLS in front "
                            "(an Ingress with a certificate) instead")]
    ranges = spec.get("loadBalancerSourceRanges") or []
    if kind_type == "LoadBalancer" and (not ranges or any(r in ("0.0.0.0/0", "::/0") for r in ranges)):
        return [(["spec", "loadBalancerSourceRanges"],
                 "a public load balancer needs source ranges narrower than the internet")]
    return []


# ------------------------------------------------------------------ one resource, one folder
def doc_problems(doc, pvcs: set[str], exposed_ok: bool, ray_version: str) -> list[tuple[list, str]]:
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind not in CRD_FILES and kind not in OTHER_KINDS:
        return [([], f"kind {kind!r}: not a resource this check knows ({', '.join([*CRD_FILES, *OTHER_KINDS])})")]
    out = secret_problems(doc, [])
    if kind == "Secret":
        for key in ("data", "stringData"):
            if doc.get(key):
                out.append(([key], "a Secret's data never goes in a manifest: create it with kubectl (k8s/README.md)"))
        return out
    if kind == "PersistentVolumeClaim":
        if "ReadWriteMany" not in ((doc.get("spec") or {}).get("accessModes") or []):
            out.append((["spec", "accessModes"], "Ray pods on several nodes mount it: it needs ReadWriteMany"))
        return out
    if kind in ("Service", "Ingress"):
        return out + service_problems(doc, exposed_ok)
    out += [(None, p) for p in schema_problems(doc, kind)]
    if doc.get("apiVersion") != "ray.io/v1":
        out.append((["apiVersion"], f"{doc.get('apiVersion')!r}: KubeRay resources here are ray.io/v1"))
    spec = doc.get("spec") or {}
    at = list(CLUSTER_SPEC[kind])
    cluster = spec.get(at[-1]) if kind != "RayCluster" else spec
    if isinstance(cluster, dict):
        out += cluster_problems(cluster, at, pvcs, ray_version)
    else:
        out.append((at, "the resource brings up its own Ray cluster here: give its spec"))
    if kind == "RayJob":
        if spec.get("submissionMode", "K8sJobMode") not in SUBMISSION_MODES:  # no enum in the CRD; the operator's
            out.append((["spec", "submissionMode"],
                        f"{spec['submissionMode']!r} is not one of {', '.join(SUBMISSION_MODES)}"))
        out += [(["spec", "entrypoint"], p) for p in entrypoint_problems(spec.get("entrypoint", ""))]
        try:
            env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
            if not isinstance(env, dict):
                out.append((["spec", "runtimeEnvYAML"], "must be a YAML mapping (a runtime env)"))
        except yaml.YAMLError as exc:
            out.append((["spec", "runtimeEnvYAML"], f"not YAML: {exc}"))
    if kind == "RayService":
        try:
            cfg = yaml.safe_load(spec.get("serveConfigV2") or "")
            out += [(["spec", "serveConfigV2", *p], m) for p, m in serve_config_problems(cfg)]
            if isinstance(cluster, dict):
                out += front_problems(cluster, at, serve_fronts(cfg))
        except yaml.YAMLError as exc:
            out.append((["spec", "serveConfigV2"], f"not YAML: {exc}"))
        svc_type = ((spec.get("serveService") or {}).get("spec") or {}).get("type", "ClusterIP")
        if svc_type != "ClusterIP":
            out.append((["spec", "serveService", "spec", "type"],
                        f"{svc_type}: Serve stays ClusterIP (its bearer token travels in plain HTTP; TLS first)"))
    return out


def manifest_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml")
                  and "crds" not in p.relative_to(folder).parts)


def check(folder: Path = K8S) -> list[str]:
    """Every problem of the manifests under ``folder`` (k8s/crds excluded), one line each."""
    folder = Path(folder).resolve()
    docs, problems = [], []
    for file in manifest_files(folder):
        label = file.relative_to(folder.parent).as_posix()
        try:
            loaded = [d for d in yaml.safe_load_all(file.read_text()) if d is not None]
        except yaml.YAMLError as exc:
            problems.append(f"{label}: not YAML: {exc}")
            continue
        for i, doc in enumerate(loaded):
            docs.append((file, f"{label}#{i + 1}" if len(loaded) > 1 else label, doc))
    pvcs = {(d.get("metadata") or {}).get("name") for _, _, d in docs
            if isinstance(d, dict) and d.get("kind") == "PersistentVolumeClaim"}
    ray_version = pins().get("ray", "?")
    for file, label, doc in docs:
        name = ((doc.get("metadata") or {}).get("name") if isinstance(doc, dict) else None) or "?"
        kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        exposed_ok = EXPOSE_DIR in file.relative_to(folder).parts[:-1]
        for path, message in doc_problems(doc, pvcs, exposed_ok, ray_version):
            where = "" if path is None else f"{json_path(path)}: "
            problems.append(f"{label}: {kind} {name}: {where}{message}")
    return problems


# ------------------------------------------------------------------ the image
def dockerfile_problems(path: Path = K8S / "Dockerfile") -> list[str]:
    """FROM the pinned rayproject/ray, torch/torchvision pinned as pyproject.toml, WORKDIR = APP_ROOT,
    no secrets, no `curl | sh`."""
    text = re.sub(r"\\\n", " ", Path(path).read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    pin, label, out = pins(), Path(path).name, []
    args = {}
    for ln in lines:
        word, _, rest = ln.partition(" ")
        if word.upper() == "ARG":
            name, _, default = rest.strip().partition("=")
            args[name] = default.strip().strip("\"'")
        if word.upper() in ("ARG", "ENV"):
            for name, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)[= ]\s*(\S+)", rest):
                if SECRET_WORD.search(name) and value.strip("\"'"):
                    out.append(f"{label}: {word} {name}: a secret baked into the image")
    froms = [re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), ln.split()[1])
             for ln in lines if ln.upper().startswith("FROM ")]
    if not froms or not froms[-1].startswith(f"rayproject/ray:{pin.get('ray')}"):
        out.append(f"{label}: FROM {froms[-1] if froms else '(none)'}: build on rayproject/ray:{pin.get('ray')}-... "
                   f"(the Ray pyproject.toml pins)")
    pip = " ".join(ln for ln in lines if ln.upper().startswith("RUN ") and "pip install" in ln)
    pip = pip.replace('"', "").replace("'", "")
    for name in ("torch", "torchvision"):
        if f"{name}=={pin.get(name)}" not in pip.split():
            out.append(f"{label}: no `pip install` pins {name}=={pin.get(name)} (as pyproject.toml does)")
    workdirs = [ln.split(None, 1)[1] for ln in lines if ln.upper().startswith("WORKDIR ")]
    if workdirs[-1:] != [APP_ROOT]:
        out.append(f"{label}: WORKDIR must be {APP_ROOT} (the manifests' paths into the image)")
    for ln in lines:
        if re.search(r"\b(curl|wget)\b[^|]*\|\s*(sudo\s+)?(ba|z)?sh\b", ln):
            out.append(f"{label}: {ln[:50]}...: no `curl | sh`; install pinned packages")
        secret, auth = INLINE_SECRET.search(ln), AUTH_OFF.search(ln)
        if secret:  # the name only: a message must not repeat the secret
            out.append(f"{label}: {secret.group(1)}=...: secrets stay out of the image")
        if auth:
            out.append(f"{label}: {auth.group(0)}: RAY_AUTH_MODE is set at run time (token), not in the image")
    return out


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    folder = Path(argv[0]) if argv else K8S
    problems = check(folder) + (dockerfile_problems(folder / "Dockerfile") if (folder / "Dockerfile").exists() else [])
    for p in problems:
        print(p)
    if problems:
        sys.exit(f"{len(problems)} problem(s)")
    print(f"{folder}: {len(manifest_files(folder))} manifests checked, no problems")


if __name__ == "__main__":
    main()
