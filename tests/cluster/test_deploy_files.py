"""docker/ and the README's cluster section: every `prvos ...` command they hold parses against the command
line (and its config and overrides load), the image is built on the installed Ray version, and the launcher
config and the KubeRay RayJob carry the fields Ray and KubeRay need. No Docker engine or Kubernetes needed."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import ray
import typer
import yaml

from pipelines.cli import app
from prvos_core.config import load_config

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
IMAGE_CHECKOUT = "/home/ray/prvos"  # where docker/Dockerfile puts the repository


def prvos_commands(shell: str) -> list[list[str]]:
    """The argument lists of every `prvos` command in a shell line, also inside quoted arguments
    (`ray exec cluster.yaml "prvos run ..."`)."""
    found = []
    for part in re.split(r"&&|\|\||;|\|", shell):
        try:
            words = shlex.split(part)
        except ValueError:
            continue
        words = [w for w in words if not re.fullmatch(r"\d?>+.*|/dev/null", w)]
        if words and words[0] == "prvos":
            found.append(words[1:])
        for word in words[1:]:
            if " " in word:
                found.extend(prvos_commands(word))
    return found


def parse(arguments: list[str]) -> tuple[str, dict]:
    """Resolve and parse `prvos ARGUMENTS` like the real command line would, without running it."""
    command = typer.main.get_command(app)
    context = command.make_context("prvos", list(arguments))
    names = []
    while hasattr(command, "resolve_command"):  # a group (typer vendors its own click)
        name, command, rest = command.resolve_command(context, [*context._protected_args, *context.args])
        names.append(name)
        context = command.make_context(name, rest, parent=context)
    return " ".join(names), context.params


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


def _dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")


def test_dockerfile_builds_on_the_installed_ray_and_checks_the_cli():
    text = _dockerfile()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    assert args["RAY_VERSION"] == ray.__version__, "the image must run the Ray version the project is tested with"
    assert args["VARIANT"] == "cpu"
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-\$\{VARIANT\}$", text, re.M)
    readme = (REPO / "README.md").read_text()
    torch_pin = re.search(r"torch==\S+ torchvision==\S+", readme).group(0)
    assert torch_pin in text, "the image installs the torch the README installs"
    runs = [line[4:] for line in text.splitlines() if line.startswith("RUN ")]
    commands = [c for line in runs for c in prvos_commands(line)]
    assert commands, "the image checks its prvos command line"
    for arguments in commands:
        check_command(arguments)
    assert (DOCKER / "Dockerfile.dockerignore").is_file()


def test_cluster_launcher_config():
    config = yaml.safe_load((DOCKER / "cluster.yaml").read_text())
    assert config["cluster_name"] and config["provider"]["type"]
    assert config["docker"]["image"] and config["docker"]["container_name"]
    assert config["head_node_type"] in config["available_node_types"]
    for node_type in config["available_node_types"].values():
        assert "node_config" in node_type
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("ray start --address=" in c for c in config["worker_start_ray_commands"])
    setup = [*config["head_setup_commands"], *config["worker_setup_commands"]]
    assert setup
    for line in setup:
        for arguments in prvos_commands(line):
            check_command(arguments)


def test_rayjob_manifest():
    job = yaml.safe_load((DOCKER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    [arguments] = prvos_commands(spec["entrypoint"])
    assert check_command(arguments) == "run"
    name, params = parse(arguments)
    assert params["address"] == "auto" and params["run_id"], "joins the job's cluster; a fixed id makes retries resume"
    assert any(item.startswith("run.root=s3://") for item in params["set_"])
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    images = {head["template"]["spec"]["containers"][0]["image"]}
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["replicas"] >= 1 and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        containers = group["template"]["spec"]["containers"]
        assert containers and all(c["name"] and c["image"] for c in containers)
        images.update(c["image"] for c in containers)
    assert len(images) == 1, "head and workers run the same image"
    text = (DOCKER / "rayjob.yaml").read_text()
    assert "AWS_SECRET_ACCESS_KEY=" not in text.replace("--from-literal=AWS_SECRET_ACCESS_KEY=...", ""), (
        "credentials come from a secret"
    )


def test_readme_cluster_commands_parse():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    lines = [line for block in re.findall(r"```\n(.*?)```", section, re.S) for line in block.splitlines()]
    inline = re.findall(r"`(prvos [^`\s]+ [^`]+)`", section)  # full commands, not mentions such as `prvos run`
    commands = [c for line in [*lines, *inline] for c in prvos_commands(line)]
    assert len(commands) >= 3
    for arguments in commands:
        check_command(arguments)
