"""cluster/gpu-cluster.yaml rendered as `ray up` renders it (Ray's own prepare_config: the file over the
provider's defaults.yaml, setup_commands merged into the head's and the workers'), then checked: no
dashboard on 0.0.0.0 without token auth, no `curl | sh`, no RAY_AUTH_MODE but token, every install
pinned. Least privilege on AWS: every node type has its instance profile and security group, the IAM
policies of cluster/iam/ grant the one bucket (and the head what Ray's autoscaler calls), no ingress from
0.0.0.0/0 or ::/0 (Ray's own default group included), cluster/setup_aws.sh run against a fake `aws`.
No deployable file turns token authentication off. Nothing is launched, no AWS or network is reached
and no Ray is started (the autoscaler's config helpers are plain Python)."""
from __future__ import annotations

import ast
import copy
import importlib.util
import itertools
import json
import os
import re
import shlex
import subprocess
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


# ------------------------------------------------------------------ least privilege on AWS
# IAM: each node type's instance profile, and the policies cluster/setup_aws.sh attaches (cluster/iam/):
# the workers get the one bucket, the head what Ray's AWS autoscaler calls (launch / tag / terminate this
# cluster's GPU workers, pass the worker role) and the same bucket. Network: no ingress from 0.0.0.0/0 or
# ::/0, neither in the group setup_aws.sh creates nor in the one Ray's own _configure_security_group
# would create for a node type without SecurityGroupIds (its SSH rule is always 0.0.0.0/0).
IAM = REPO / "cluster" / "iam"
POLICY_FILES = {"head": IAM / "head-policy.json", "worker": IAM / "worker-policy.json"}
INGRESS_FILE = IAM / "security-group-ingress.json"
SETUP = REPO / "cluster" / "setup_aws.sh"
ACCOUNT = r"(?:<ACCOUNT_ID>|\d{12})"
PROFILE_ARN = re.compile(rf"^arn:aws:iam::{ACCOUNT}:instance-profile/([\w+=,.@-]+)$")
ROLE_ARN = re.compile(rf"^arn:aws:iam::{ACCOUNT}:role/([\w+=,.@-]+)$")
EC2_ARN = re.compile(rf"^arn:aws:ec2:([^:]*):({ACCOUNT}|):([a-z-]+)/(.+)$")
S3_ARN = re.compile(r"^arn:aws:s3:::([^/]+)(/.*)?$")
S3_ACTIONS = {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
              "s3:ListMultipartUploadParts"}
EC2_DESCRIBE = {"ec2:DescribeInstances", "ec2:DescribeInstanceTypes", "ec2:DescribeSubnets",
                "ec2:DescribeSecurityGroups"}  # no resource-level permissions: "*" with a region condition
HEAD_ACTIONS = EC2_DESCRIBE | {"ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances", "iam:PassRole"}
WORLD = ("0.0.0.0/0", "::/0")
RAY_SG_FUNCTIONS = ("_set_config_info", "_configure_security_group", "_upsert_security_groups",
                    "_upsert_security_group_rules", "_update_inbound_rules", "_create_default_inbound_rules",
                    "_create_default_intracluster_inbound_rules", "_create_default_ssh_inbound_rules")


def _list(x) -> list:
    return [x] if isinstance(x, (str, dict)) else list(x or [])


def _cond(statement: dict, op: str, key: str) -> list[str]:
    return [str(v) for v in _list((statement.get("Condition") or {}).get(op, {}).get(key))]


def ray_security_group(rendered: dict) -> tuple[list[str], list[dict]]:
    """Ray's own ``_configure_security_group`` (the installed ray's code, run offline: only the EC2 lookup
    is faked) on the rendered config: the node types `ray up` would put into its default group
    ``ray-autoscaler-<cluster>``, and the ingress rules it would authorize there (its defaults merged with
    ``provider.security_group.IpPermissions``). The module imports boto3, so its functions are compiled
    from its source rather than imported."""
    origin = importlib.util.find_spec("ray.autoscaler._private.aws.config").origin
    tree = ast.parse(Path(origin).read_text())
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in RAY_SG_FUNCTIONS]
    assert sorted(f.name for f in funcs) == sorted(RAY_SG_FUNCTIONS), "Ray's security-group code changed"

    class Group:  # the group `ray up` would create; EC2 keeps what authorize_ingress adds
        id = "sg-ray-default"

        def __init__(self):
            self.ip_permissions = []

        def authorize_ingress(self, IpPermissions):
            self.ip_permissions += IpPermissions

    group = Group()
    ns = {"itertools": itertools, "_log_info": {},
          "_get_or_create_vpc_security_groups": lambda conf, node_types: {t: group for t in node_types}}
    exec(compile(ast.Module(funcs, type_ignores=[]), origin, "exec"), ns)
    config = copy.deepcopy(rendered)
    ns["_configure_security_group"](config)
    defaulted = [t for t, n in config["available_node_types"].items()
                 if n["node_config"].get("SecurityGroupIds") == [Group.id]]
    return defaulted, group.ip_permissions


def open_to_world(rules: list[dict]) -> list[str]:
    """Each rule of ``rules`` (EC2 IpPermissions) reachable from anywhere, in words."""
    out = []
    for rule in rules:
        sources = [r.get("CidrIp") for r in rule.get("IpRanges") or []]
        sources += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges") or []]
        for cidr in sources:
            if cidr not in WORLD:
                continue
            lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
            if str(rule.get("IpProtocol")) == "-1" or lo == -1:
                what = "all traffic (SSH 22 included)"
            elif lo == hi:
                what = "SSH (22)" if lo == 22 else f"port {lo}"
            else:
                what = f"ports {lo}-{hi}" + (" (SSH 22 included)" if lo <= 22 <= hi else "")
            out.append(f"{what} open to {cidr}")
    return out


def policy_problems(name: str, policy: dict, kind: str, config: dict) -> tuple[list[str], set[str]]:
    """What ``policy`` (the "head" or "worker" role's) grants beyond its role; and the buckets it names."""
    region, cluster = config["provider"]["region"], config["cluster_name"]
    nodes = config["available_node_types"]
    workers = {t: n for t, n in nodes.items() if t != config["head_node_type"]}
    worker_profiles = {m.group(1) for n in workers.values()
                       if (m := PROFILE_ARN.match(str((n["node_config"].get("IamInstanceProfile") or {}).get("Arn"))))}
    worker_types = {n["node_config"].get("InstanceType") for n in workers.values()}
    out, buckets = [], set()
    if policy.get("Version") != "2012-10-17":
        out.append(f"{name}: Version must be 2012-10-17 (older versions ignore policy variables)")
    for i, st in enumerate(_list(policy.get("Statement"))):
        where = f"{name}: statement {st.get('Sid', i)}"
        if st.get("Effect") != "Allow":
            continue  # a Deny only takes away
        for key in ("NotAction", "NotResource", "NotPrincipal"):
            if key in st:
                out.append(f"{where}: {key} allows everything it does not name")
        actions, resources = [str(a) for a in _list(st.get("Action"))], [str(r) for r in _list(st.get("Resource"))]
        for a in actions:
            if "*" in a or "?" in a:
                out.append(f"{where}: {a}: a wildcard action")
            elif a.startswith("s3:"):
                if a not in S3_ACTIONS:
                    out.append(f"{where}: {a}: not needed for checkpoint storage")
            elif kind == "worker":
                out.append(f"{where}: {a}: the workers need the one bucket and nothing else")
            elif a not in HEAD_ACTIONS:
                out.append(f"{where}: {a}: not something Ray's AWS autoscaler calls")
        s3 = [a for a in actions if a.startswith("s3:")]
        if s3 and len(s3) != len(actions):
            out.append(f"{where}: S3 and other actions in one statement")
        for r in resources:
            if s3:
                m = S3_ARN.match(r)
                if not m or any(c in m.group(1) for c in "*?$"):
                    out.append(f"{where}: {', '.join(s3)} on {r!r}: more than the one bucket")
                else:
                    buckets.add(m.group(1))
                continue
            if r == "*":
                if not set(actions) <= EC2_DESCRIBE:
                    out.append(f"{where}: {', '.join(sorted(set(actions) - EC2_DESCRIBE))} on '*': every resource")
                elif _cond(st, "StringEquals", "aws:RequestedRegion") != [region] and \
                        _cond(st, "StringEquals", "aws:RequestedRegion") != ["<REGION>"]:
                    out.append(f"{where}: Describe on '*' without aws:RequestedRegion = {region}")
                continue
            if "iam:PassRole" in actions:
                m = ROLE_ARN.match(r)
                if not m or worker_profiles and m.group(1) not in worker_profiles:  # none: aws_problems says so
                    out.append(f"{where}: iam:PassRole on {r!r}: only the worker role ({', '.join(worker_profiles)})")
                if _cond(st, "StringEquals", "iam:PassedToService") != ["ec2.amazonaws.com"]:
                    out.append(f"{where}: iam:PassRole without iam:PassedToService = ec2.amazonaws.com")
                continue
            m = EC2_ARN.match(r)
            if not m or m.group(1) not in (region, "<REGION>") or "*" in m.group(1) + m.group(2):
                out.append(f"{where}: {r!r}: not an EC2 resource of this account in {region}")
                continue
            if m.group(3) != "instance":
                continue
            if "ec2:RunInstances" in actions:
                need = {("StringEquals", "aws:RequestTag/ray-cluster-name"): [cluster],
                        ("StringEquals", "aws:RequestTag/ray-node-type"): ["worker"]}
                for (op, key), value in need.items():
                    if _cond(st, op, key) != value:
                        out.append(f"{where}: ec2:RunInstances on {r!r} without {key} = {value[0]}")
                types = set(_cond(st, "StringEquals", "ec2:InstanceType"))
                if not types or types - worker_types or worker_types - types:
                    out.append(f"{where}: ec2:InstanceType {sorted(types)} is not the workers' {sorted(worker_types)}")
                profiles = {m2.group(1) for p in _cond(st, "ArnEquals", "ec2:InstanceProfile")
                            if (m2 := PROFILE_ARN.match(p))}
                if not profiles or worker_profiles and profiles != worker_profiles:
                    out.append(f"{where}: ec2:RunInstances without ec2:InstanceProfile = the workers' "
                               f"({', '.join(worker_profiles)})")
            elif _cond(st, "StringEquals", "ec2:CreateAction") != ["RunInstances"]:  # else: tags at launch only
                if _cond(st, "StringEquals", "ec2:ResourceTag/ray-cluster-name") != [cluster] or \
                        _cond(st, "StringEquals", "ec2:ResourceTag/ray-node-type") != ["worker"]:
                    out.append(f"{where}: {', '.join(actions)} on {r!r}: not only this cluster's workers "
                               f"(ec2:ResourceTag/ray-cluster-name = {cluster}, ray-node-type = worker)")
    if len(buckets) != 1:
        out.append(f"{name}: {len(buckets)} buckets {sorted(buckets)}: exactly the one storage bucket")
    return out, buckets


def aws_problems(rendered: dict, policies: dict[str, dict], ingress: list[dict]) -> list[str]:
    """The rendered config's instance profiles and security groups, the two policies, the group's rules."""
    out = []
    nodes, head_type = rendered["available_node_types"], rendered["head_node_type"]
    profiles = {}
    for name, node in nodes.items():
        arn = str((node["node_config"].get("IamInstanceProfile") or {}).get("Arn"))
        m = PROFILE_ARN.match(arn)
        if m:
            profiles[name] = m.group(1)
        elif name == head_type:
            out.append(f"available_node_types.{name}: no IamInstanceProfile Arn: `ray up` gives the head "
                       f"ray-autoscaler-v1 (AmazonEC2FullAccess + AmazonS3FullAccess)")
        else:
            out.append(f"available_node_types.{name}: no IamInstanceProfile Arn: the workers get no credentials "
                       f"(Ray Train's s3:// checkpoints fail)")
    for name, profile in profiles.items():
        if name != head_type and profile == profiles.get(head_type):
            out.append(f"available_node_types.{name}: the head's instance profile {profile} on a worker")
    if nodes[head_type].get("max_workers", 0) != 0 and head_type in profiles:
        out.append(f"available_node_types.{head_type}: max_workers > 0 gives workers the head's instance profile")

    defaulted, rules = ray_security_group(rendered)
    for what in open_to_world(rules):
        out.append(f"available_node_types.{', '.join(defaulted)}: no SecurityGroupIds: `ray up` creates "
                   f"ray-autoscaler-{rendered['cluster_name']} with {what}")
    for what in open_to_world(_list((rendered["provider"].get("security_group") or {}).get("IpPermissions"))):
        out.append(f"provider.security_group.IpPermissions: {what}")
    for what in open_to_world(ingress):
        out.append(f"{INGRESS_FILE.name}: {what}")
    ssh = [r.get("CidrIp") for rule in ingress if rule.get("FromPort") == 22 for r in rule.get("IpRanges") or []]
    if not ssh or any(c != "<SSH_CIDR>" and not re.fullmatch(r"[\d.]+/(?:[89]|[12]\d|3[0-2])", str(c)) for c in ssh):
        out.append(f"{INGRESS_FILE.name}: SSH (22) must come from <SSH_CIDR> (setup_aws.sh fills it in): {ssh}")

    found = {}
    for kind, policy in policies.items():
        problems_, found[kind] = policy_problems(POLICY_FILES[kind].name, policy, kind, rendered)
        out += problems_
    if found.get("head") != found.get("worker"):
        out.append(f"{POLICY_FILES['head'].name}: bucket {sorted(found.get('head', []))} is not the workers' "
                   f"{sorted(found.get('worker', []))}")
    return out


@pytest.fixture(scope="module")
def aws() -> dict:
    return {"policies": {k: json.loads(p.read_text()) for k, p in POLICY_FILES.items()},
            "ingress": json.loads(INGRESS_FILE.read_text())}


def test_the_instance_profiles_policies_and_security_group_grant_least_privilege(rendered, aws):
    assert aws_problems(rendered, aws["policies"], aws["ingress"]) == []
    assert ray_security_group(rendered) == ([], [])  # every node type has its group: Ray creates none
    for node in rendered["available_node_types"].values():
        assert node["node_config"]["SecurityGroupIds"] == ["<SECURITY_GROUP_ID>"]  # `ray up` stops on it


def test_the_renderer_sees_rays_default_ssh_rule(rendered):
    """The check above means something: Ray's default group (and its merge) is 0.0.0.0/0 on port 22."""
    bare = copy.deepcopy(rendered)
    for node in bare["available_node_types"].values():
        node["node_config"].pop("SecurityGroupIds")
    bare["provider"]["security_group"] = {"IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "203.0.113.7/32"}]}]}
    defaulted, rules = ray_security_group(bare)
    assert sorted(defaulted) == sorted(bare["available_node_types"])
    assert "SSH (22) open to 0.0.0.0/0" in open_to_world(rules)  # added, not replaced
    assert {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "203.0.113.7/32"}]} in rules


def _node(name, *path, value=None, pop=False):
    def mutate(b):
        d = b["config"]["available_node_types"][name]["node_config"]
        for k in path[:-1]:
            d = d[k]
        d.pop(path[-1]) if pop else d.__setitem__(path[-1], value)
    return mutate


def _statement(kind, sid, **changes):
    def mutate(b):
        st = next(s for s in b["policies"][kind]["Statement"] if s.get("Sid") == sid)
        for k, v in changes.items():
            st.pop(k) if v is None else st.__setitem__(k, v)
    return mutate


def _add_statement(kind, statement):
    return lambda b: b["policies"][kind]["Statement"].append(statement)


def _ingress(rule):
    return lambda b: b["ingress"].append(rule)


WORLD_SSH = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
BROKEN_AWS = {  # id: (mutation of {config, policies, ingress}, what a problem must name)
    "worker without an instance profile": (_node("gpu_worker", "IamInstanceProfile", pop=True),
                                           ["available_node_types.gpu_worker", "no IamInstanceProfile"]),
    "head without an instance profile (Ray's full-access default)": (
        _node("head", "IamInstanceProfile", pop=True),
        ["available_node_types.head", "no IamInstanceProfile", "AmazonEC2FullAccess"]),
    "worker with the head's profile": (
        _node("gpu_worker", "IamInstanceProfile", "Arn",
              value="arn:aws:iam::<ACCOUNT_ID>:instance-profile/reidloop-gpu-head"),
        ["available_node_types.gpu_worker", "the head's instance profile"]),
    "worker policy: s3:* on *": (_add_statement("worker", {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}),
                                 ["worker-policy.json", "s3:*"]),
    "worker policy: another bucket": (
        _statement("worker", "ObjectsOfTheOneBucket", Resource=["arn:aws:s3:::<BUCKET>/*", "arn:aws:s3:::other/*"]),
        ["worker-policy.json", "2 buckets", "other"]),
    "worker policy: every bucket": (_statement("worker", "ListTheOneBucket", Resource="arn:aws:s3:::*"),
                                    ["worker-policy.json", "more than the one bucket"]),
    "worker policy: an object action on '*'": (_statement("worker", "ObjectsOfTheOneBucket", Resource="*"),
                                               ["worker-policy.json", "on '*'"]),
    "worker policy: a non-S3 action": (
        _add_statement("worker", {"Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"}),
        ["worker-policy.json", "ec2:DescribeInstances", "nothing else"]),
    "worker policy: NotAction": (
        _add_statement("worker", {"Effect": "Allow", "NotAction": "iam:*", "Resource": "arn:aws:s3:::<BUCKET>"}),
        ["worker-policy.json", "NotAction"]),
    "head policy: ec2:*": (_statement("head", "TagAndTerminateOnlyThisClustersWorkers", Action="ec2:*"),
                           ["head-policy.json", "ec2:*"]),
    "head policy: s3:* on *": (_add_statement("head", {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}),
                               ["head-policy.json", "s3:*"]),
    "head policy: another bucket than the workers'": (
        lambda b: [s.__setitem__("Resource", s["Resource"].replace("<BUCKET>", "other"))
                   for s in b["policies"]["head"]["Statement"] if "s3:" in str(s["Action"])],
        ["head-policy.json", "bucket ['other'] is not the workers'"]),
    "head policy: an unrelated action": (
        _add_statement("head", {"Effect": "Allow", "Action": "iam:CreateRole", "Resource": "*"}),
        ["head-policy.json", "iam:CreateRole", "not something Ray's AWS autoscaler calls"]),
    "head policy: PassRole on any role": (
        _statement("head", "PassOnlyTheWorkerRoleToEc2", Resource="arn:aws:iam::<ACCOUNT_ID>:role/*"),
        ["head-policy.json", "iam:PassRole", "only the worker role"]),
    "head policy: terminate anything": (
        _statement("head", "TagAndTerminateOnlyThisClustersWorkers", Resource="*"),
        ["head-policy.json", "ec2:TerminateInstances", "on '*'"]),
    "head policy: terminate any instance of the account": (
        _statement("head", "TagAndTerminateOnlyThisClustersWorkers", Condition=None),
        ["head-policy.json", "not only this cluster's workers"]),
    "head policy: launch untagged instances": (
        _statement("head", "LaunchOnlyTaggedGpuWorkersWithTheWorkerProfile", Condition=None),
        ["head-policy.json", "ec2:RunInstances", "aws:RequestTag/ray-cluster-name"]),
    "head policy: describe in every region": (_statement("head", "ReadOnlyDescribeInTheRegion", Condition=None),
                                              ["head-policy.json", "aws:RequestedRegion"]),
    "head policy: another region": (
        lambda b: [s.__setitem__("Resource", [r.replace("<REGION>", "eu-west-1") for r in _list(s["Resource"])])
                   for s in b["policies"]["head"]["Statement"] if s.get("Sid") == "LaunchIntoTheClusterSecurityGroup"],
        ["head-policy.json", "not an EC2 resource of this account in us-west-2"]),
    "a worker type the head may not launch": (_node("gpu_worker", "InstanceType", value="p4d.24xlarge"),
                                              ["head-policy.json", "p4d.24xlarge"]),
    "SSH from anywhere in the group": (_ingress(WORLD_SSH),
                                       ["security-group-ingress.json", "SSH (22) open to 0.0.0.0/0"]),
    "SSH from anywhere over IPv6": (
        _ingress({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}),
        ["security-group-ingress.json", "SSH (22) open to ::/0"]),
    "all traffic from anywhere": (_ingress({"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}),
                                  ["security-group-ingress.json", "all traffic (SSH 22 included) open to 0.0.0.0/0"]),
    "SSH source not the placeholder": (lambda b: b["ingress"][0]["IpRanges"][0].update(CidrIp="0.0.0.0/1"),
                                       ["security-group-ingress.json", "must come from <SSH_CIDR>"]),
    "a node type without SecurityGroupIds (Ray's default group)": (
        _node("gpu_worker", "SecurityGroupIds", pop=True),
        ["available_node_types.gpu_worker: no SecurityGroupIds", "SSH (22) open to 0.0.0.0/0"]),
    "Ray's default group with narrowed IpPermissions (merged, not replaced)": (
        lambda b: (_node("head", "SecurityGroupIds", pop=True)(b), b["config"]["provider"].update(security_group={
            "GroupName": "reidloop", "IpPermissions": [dict(WORLD_SSH, IpRanges=[{"CidrIp": "203.0.113.7/32"}])]})),
        ["available_node_types.head: no SecurityGroupIds", "SSH (22) open to 0.0.0.0/0"]),
    "provider.security_group opening SSH": (
        lambda b: b["config"]["provider"].update(security_group={"IpPermissions": [WORLD_SSH]}),
        ["provider.security_group.IpPermissions", "SSH (22) open to 0.0.0.0/0"]),
}


@pytest.mark.parametrize("case", list(BROKEN_AWS), ids=list(BROKEN_AWS))
def test_a_deliberate_privilege_error_is_named(case, config, aws):
    mutate, expected = BROKEN_AWS[case]
    bundle = copy.deepcopy({"config": config, **aws})
    mutate(bundle)
    found = aws_problems(render(bundle["config"]), bundle["policies"], bundle["ingress"])
    assert any(all(e in p for e in expected) for p in found), f"{case}: nothing names {expected}:\n" + "\n".join(found)


# ------------------------------------------------------------------ cluster/setup_aws.sh, with a fake `aws`
FAKE_AWS = r"""#!/usr/bin/env bash
echo "$*" >>"$AWS_LOG"
for a in "$@"; do [[ "$a" == file://* ]] && cp "${a#file://}" "$AWS_FILES/"; done
case "$1 $2" in
  "sts get-caller-identity") echo 123456789012 ;;
  "ec2 describe-vpcs") echo vpc-0abc ;;
  "ec2 describe-security-groups") [[ "$*" == *group-name* ]] && echo None || printf '0.0.0.0/0\t203.0.113.7/32\n' ;;
  "ec2 create-security-group") echo sg-0123abcd ;;
  "iam get-role" | "iam get-instance-profile") exit 254 ;;
esac
exit 0
"""


def _setup(tmp_path, **env) -> tuple[subprocess.CompletedProcess, Path]:
    bin_, files = tmp_path / "bin", tmp_path / "files"
    bin_.mkdir(exist_ok=True)
    files.mkdir(exist_ok=True)
    (bin_ / "aws").write_text(FAKE_AWS)
    (bin_ / "aws").chmod(0o755)
    run_env = {k: v for k, v in os.environ.items() if k not in ("BUCKET", "SSH_CIDR", "REGION", "VPC_ID")}
    run_env.update(PATH=f"{bin_}:{os.environ['PATH']}", AWS_LOG=str(tmp_path / "aws.log"), AWS_FILES=str(files), **env)
    return subprocess.run(["bash", str(SETUP)], env=run_env, capture_output=True, text=True, timeout=60), tmp_path


def test_setup_fills_in_the_policies_and_the_group_and_the_filled_config_passes(tmp_path):
    proc, out = _setup(tmp_path, BUCKET="my-reidloop-bucket", SSH_CIDR="203.0.113.7/32")
    assert proc.returncode == 0, proc.stderr
    calls = (out / "aws.log").read_text()
    assert "revoke-security-group-ingress --group-id sg-0123abcd --protocol tcp --port 22 --cidr 0.0.0.0/0" in calls
    assert "--cidr 203.0.113.7/32" not in calls  # the wanted source stays
    assert "--role-name reidloop-gpu-worker --policy-name reidloop-gpu-worker" in calls
    assert "--role-name reidloop-gpu-head --policy-name reidloop-gpu-head" in calls
    sent = {p.name: p.read_text() for p in (out / "files").iterdir()}
    assert not any("<" in text for name, text in sent.items() if name != "ec2-trust-policy.json")
    ingress = json.loads(sent[INGRESS_FILE.name])
    assert ingress[0]["IpRanges"][0]["CidrIp"] == "203.0.113.7/32"
    assert ingress[1]["UserIdGroupPairs"][0]["GroupId"] == "sg-0123abcd"
    policies = {k: json.loads(sent[p.name]) for k, p in POLICY_FILES.items()}
    assert "arn:aws:s3:::my-reidloop-bucket/*" in sent["worker-policy.json"]
    # the printed sed line applied to the config: what `ray up` then launches
    sed = next(line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("sed -i"))
    filled = yaml.safe_load(CONFIG.read_text()
                            .replace("<ACCOUNT_ID>", re.search(r"s/<ACCOUNT_ID>/(\d+)/", sed).group(1))
                            .replace("<SECURITY_GROUP_ID>", re.search(r"s/<SECURITY_GROUP_ID>/(sg-\w+)/", sed).group(1)))
    rendered = render(filled)
    assert aws_problems(rendered, policies, ingress) == []
    assert problems(rendered) == []
    assert rendered["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]["Arn"] == \
        "arn:aws:iam::123456789012:instance-profile/reidloop-gpu-worker"


@pytest.mark.parametrize("env, message", [
    ({"BUCKET": "b-1", "SSH_CIDR": "0.0.0.0/0"}, "must not be open to the internet"),
    ({"BUCKET": "b-1", "SSH_CIDR": "::/0"}, "not an IPv4 CIDR"),
    ({"BUCKET": "b-1", "SSH_CIDR": "10.0.0.0/4"}, "must not be open to the internet"),
    ({"BUCKET": "b-1"}, "set SSH_CIDR"),
    ({"SSH_CIDR": "203.0.113.7/32"}, "set BUCKET"),
    ({"BUCKET": "<BUCKET>", "SSH_CIDR": "203.0.113.7/32"}, "not an S3 bucket name"),
], ids=["0.0.0.0/0", "::/0", "a /4", "no SSH_CIDR", "no BUCKET", "the placeholder"])
def test_setup_refuses_before_calling_aws(tmp_path, env, message):
    proc, out = _setup(tmp_path, **env)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert not (out / "aws.log").exists()


# ------------------------------------------------------------------ no RAY_AUTH_MODE but token, anywhere deployed
AUTH_SETTINGS = [  # the value RAY_AUTH_MODE is given, in the forms the deployable files use
    re.compile(r"RAY_AUTH_MODE\s*=\s*[\"'`]?([^\s\"'`;&|)]+)"),  # shell, Dockerfile ENV, env files
    re.compile(r"RAY_AUTH_MODE[\"'`]?\s*:\s*[\"'`]?([^\s\"'`,}]+)"),  # YAML / JSON / dict literal
    re.compile(r"RAY_AUTH_MODE[\"']\s*,\s*[\"']([^\"']*)[\"']"),  # setdefault("RAY_AUTH_MODE", "...")
    re.compile(r"RAY_AUTH_MODE[\"']\]\s*=\s*[\"']([^\"']*)[\"']"),  # os.environ["RAY_AUTH_MODE"] = "..."
    re.compile(r"name:\s*[\"']?RAY_AUTH_MODE[\"']?\s*\n\s*value:\s*[\"']?([^\s\"']+)"),  # Kubernetes env
]


def deployable_files() -> dict[str, str]:
    """What runs outside the tests: cluster/, k8s/, tune_configs/*.yaml, Makefile, trainers/, services/."""
    paths = [p for d in ("cluster", "k8s") for p in (REPO / d).rglob("*") if p.is_file()]
    paths += list((REPO / "tune_configs").glob("*.yaml")) + [REPO / "Makefile"]
    paths += list((REPO / "trainers").glob("*.py")) + list((REPO / "services").glob("*.py"))
    out = {}
    for p in paths:
        try:
            out[str(p.relative_to(REPO))] = p.read_text()
        except UnicodeDecodeError:
            continue
    return out


def auth_mode_problems(files: dict[str, str]) -> list[str]:
    out = []
    for path, text in sorted(files.items()):
        for pattern in AUTH_SETTINGS:
            for m in pattern.finditer(text):
                value = m.group(1)
                if value.lower() != "token" and not value.startswith("{"):  # "{...}": an f-string message
                    line = text.count("\n", 0, m.start()) + 1
                    out.append(f"{path}:{line}: RAY_AUTH_MODE={value}: Ray's token authentication must stay on")
    return out


def test_no_deployable_file_turns_token_authentication_off():
    files = deployable_files()
    assert {"Makefile", "cluster/start_head.sh", "tune_configs/serve_deploy.yaml", "trainers/serve.py",
            "services/ray_loop.py", "k8s/rayjob-loop.yaml"} <= set(files)
    assert auth_mode_problems(files) == []


AUTH_OFF = {  # id: (file, text added, what a problem must name)
    "Makefile export": ("Makefile", "\nrun: export RAY_AUTH_MODE=disabled\n", "Makefile:"),
    "script": ("cluster/start_head.sh", "\nexport RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0\n",
               "cluster/start_head.sh:"),
    "inline in a command": ("cluster/README.md", "\nRAY_AUTH_MODE=off ray job submit -- echo\n", "cluster/README.md:"),
    "runtime env in a serve config": ("tune_configs/serve_deploy.yaml",
                                      "\n    runtime_env:\n      env_vars:\n        RAY_AUTH_MODE: disabled\n",
                                      "tune_configs/serve_deploy.yaml:"),
    "setdefault in an entry point": ("trainers/serve.py", '\nos.environ.setdefault("RAY_AUTH_MODE", "disabled")\n',
                                     "trainers/serve.py:"),
    "os.environ in a service": ("services/ray_loop.py", '\nos.environ["RAY_AUTH_MODE"] = "disabled"\n',
                                "services/ray_loop.py:"),
    "runtime_env dict": ("trainers/l2r_experiment.py",
                         '\nray.init(runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})\n',
                         "trainers/l2r_experiment.py:"),
    "Kubernetes env": ("k8s/rayjob-loop.yaml", "\n        - name: RAY_AUTH_MODE\n          value: disabled\n",
                       "k8s/rayjob-loop.yaml:"),
}


@pytest.mark.parametrize("case", list(AUTH_OFF), ids=list(AUTH_OFF))
def test_auth_turned_off_in_a_deployable_file_is_named(case):
    path, added, where = AUTH_OFF[case]
    files = deployable_files()
    files[path] += added
    found = auth_mode_problems(files)
    assert any(where in p and "must stay on" in p for p in found), f"{case}: nothing names {where}:\n" + "\n".join(found)


def test_the_tests_own_local_ray_is_not_a_deployable_file():
    assert not any(p.startswith("tests/") for p in deployable_files())
    assert auth_mode_problems({"tests/conftest.py": (REPO / "tests" / "conftest.py").read_text()})  # it is detected
