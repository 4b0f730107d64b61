"""deploy/ cannot run here (no Docker, no cluster): these tests parse its files and check them against
the code: every command they run is one the `flywheel` or Dagster CLIs accept, with these options,
and every environment variable they set is one the code (or a library it documents) reads."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import click
import pytest
import yaml

from flywheel_pipeline.cli import build_parser
from flywheel_pipeline.service.settings import ServiceSettings
from flywheel_pipeline_tests.fakes.http import REPO

DEPLOY = REPO / "deploy"
# names read by libraries rather than our code: boto3's credential chain, Python and pip
LIBRARY_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR"}
_PREFIXES = re.compile(r"^(FLYWHEEL|DAGSTER|AWS|MLFLOW)_[A-Z0-9_]+$")


class _Recorder(dict):
    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def get(self, key, default=None):
        self.seen.add(key)
        return super().get(key, default)


def names_the_code_reads() -> set[str]:
    """Every setting name spelled out in the package (a string literal that is exactly a name) and
    every name the service's settings ask the environment for."""
    names = set()
    for path in (REPO / "flywheel_pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _PREFIXES.match(node.value):
                names.add(node.value)
    recorder = _Recorder()
    ServiceSettings.from_env(recorder)
    return names | recorder.seen


CLICK_CLIS = {}


def _click_cli(program: str) -> click.Command:
    if not CLICK_CLIS:
        from dagster._cli import cli as dagster_cli
        from dagster._daemon.cli import cli as daemon_cli
        from dagster_webserver.cli import cli as webserver_cli

        CLICK_CLIS.update({"dagster": dagster_cli, "dagster-daemon": daemon_cli, "dagster-webserver": webserver_cli})
    return CLICK_CLIS[program]


def check_command(argv: list[str]) -> None:
    """Parse ``argv`` as its program would (unknown commands or options raise), without running it."""
    program, args = argv[0], list(argv[1:])
    if program == "flywheel":
        parsed = build_parser().parse_args(args)  # SystemExit on anything it does not know
        assert callable(parsed.func)
        return
    command = _click_cli(program)
    ctx = None
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        name = args.pop(0)
        sub = command.get_command(click.Context(command, info_name=program), name)
        assert sub is not None, f"{program}: no command {name!r}"
        command = sub
    ctx = command.make_context(program, args)  # click.UsageError on unknown or malformed options
    assert ctx.params is not None


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _ours(service: dict) -> bool:
    return service.get("image", "").startswith("flywheel:")


def _env_file_names(path: Path) -> set[str]:
    return {line.split("=", 1)[0] for line in path.read_text().splitlines() if line and not line.startswith("#")}


def test_the_compose_file_runs_known_commands_with_known_settings():
    compose = _compose()
    services = compose["services"]
    ours = {name: s for name, s in services.items() if _ours(s)}
    assert set(ours) == {"code", "webserver", "daemon", "serve-a", "serve-b"}
    assert {"postgres", "minio"} <= set(services)
    known = names_the_code_reads() | LIBRARY_ENV
    for name, service in ours.items():
        # files bind-mounted from deploy/ are checked at their place in the repository
        mounts = {v.split(":")[1]: str(DEPLOY / v.split(":")[0]) for v in service.get("volumes", [])
                  if v.startswith("./")}
        check_command([mounts.get(arg, arg) for arg in service["command"]])
        unknown = set(service.get("environment", {})) - known
        assert not unknown, f"{name} sets {unknown}, which nothing reads"
    env_file = DEPLOY / "flywheel.env.example"
    assert _env_file_names(env_file) <= known
    # every ${VAR} the file interpolates is in the example env file (compose --env-file)
    interpolated = set(re.findall(r"\$\{([A-Z0-9_]+)", (DEPLOY / "docker-compose.yml").read_text()))
    assert interpolated <= _env_file_names(env_file)
    # two replicas with their own ids and spools on one S3 landing zone
    a, b = services["serve-a"]["environment"], services["serve-b"]["environment"]
    assert a["FLYWHEEL_REPLICA_ID"] != b["FLYWHEEL_REPLICA_ID"]
    assert a["FLYWHEEL_LANDING"] == b["FLYWHEEL_LANDING"] == services["code"]["environment"]["FLYWHEEL_LANDING"]
    assert a["FLYWHEEL_LANDING"].startswith("s3://")
    assert services["serve-a"]["volumes"][0] != services["serve-b"]["volumes"][0]
    # the webserver's workspace names the code server and the code location's name
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())["load_from"][0]["grpc_server"]
    code_args = services["code"]["command"]
    assert workspace["host"] == "code" and str(workspace["port"]) == code_args[code_args.index("--port") + 1]
    assert workspace["location_name"] == code_args[code_args.index("--location-name") + 1] == "flywheel_pipeline"


def test_the_dockerfile_installs_the_package_and_runs_a_known_command():
    text = (DEPLOY / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    check_command(cmd)
    env_names = set(re.findall(r"\b([A-Z][A-Z0-9_]+)=", text.split("WORKDIR")[0]))
    assert env_names and env_names <= names_the_code_reads() | LIBRARY_ENV
    assert "COPY dagster.yaml" in text and (REPO / "dagster.yaml").exists()
    assert re.search(r"pip install \. ", text)


def test_the_helm_values_launch_runs_on_kubernetes_from_the_code_location():
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    deployments = values["dagster-user-deployments"]
    assert deployments["enabled"] is True
    (location,) = deployments["deployments"]
    check_command(["dagster", "api", "grpc", *location["dagsterApiGrpcArgs"]])
    args = location["dagsterApiGrpcArgs"]
    assert args[args.index("--module-name") + 1] == "flywheel_pipeline.definitions"
    env = {e["name"]: e["value"] for e in location["env"]}
    assert set(env) <= names_the_code_reads() | LIBRARY_ENV
    assert env["FLYWHEEL_ENV"] == "production" and env["FLYWHEEL_LANDING"].startswith("s3://")


def test_the_service_manifest_runs_replicas_with_persistent_spools():
    documents = list(yaml.safe_load_all((DEPLOY / "k8s" / "service.yaml").read_text()))
    kinds = {d["kind"]: d for d in documents}
    assert set(kinds) == {"StatefulSet", "Service"}
    spec = kinds["StatefulSet"]["spec"]
    assert spec["replicas"] >= 2
    (container,) = spec["template"]["spec"]["containers"]
    check_command(container["command"])
    names = {e["name"] for e in container["env"]}
    assert names <= names_the_code_reads() | LIBRARY_ENV
    assert {"FLYWHEEL_LANDING", "FLYWHEEL_SPOOL", "FLYWHEEL_REPLICA_ID"} <= names
    spool = next(e["value"] for e in container["env"] if e["name"] == "FLYWHEEL_SPOOL")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["spool"] == spool
    assert [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == ["spool"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_checks_catch_an_unknown_command_option_or_setting():
    with pytest.raises(SystemExit):
        check_command(["flywheel", "serve", "--no-such-option"])
    with pytest.raises(click.UsageError):
        check_command(["dagster", "code-server", "start", "--no-such-option"])
    with pytest.raises(AssertionError):
        check_command(["dagster", "no-such-command"])
    assert "FLYWHEEL_LANDING" in names_the_code_reads() and "FLYWHEEL_REPLICA_ID" in names_the_code_reads()
    assert "FLYWHEEL_NO_SUCH_SETTING" not in names_the_code_reads()
