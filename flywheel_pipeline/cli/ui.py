"""``flywheel ui``: `dagster dev` on the local instance, with the code location named as in
the top-level ``workspace.yaml`` and ``pyproject.toml`` (``flywheel_pipeline``)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from flywheel_pipeline import paths
from flywheel_pipeline.cli.options import add_parser
from flywheel_pipeline.cli.output import say

CODE_LOCATION_MODULE = "flywheel_pipeline.definitions"
# `dagster dev -m MODULE` names the location after the module and has no flag to rename it, so
# `flywheel ui` hands it a workspace file instead, the same load_from as workspace.yaml
CODE_LOCATION_NAME = "flywheel_pipeline"


def workspace_yaml(working_directory: str) -> str:
    """The checkout's workspace.yaml code location, loaded from ``working_directory`` (what
    `dagster dev -m` does with the current directory)."""
    return ("# Written by `flywheel ui`: the code location of the checkout's workspace.yaml.\n"
            "load_from:\n"
            "  - python_module:\n"
            f"      module_name: {CODE_LOCATION_MODULE}\n"
            f"      location_name: {CODE_LOCATION_NAME}\n"
            f"      working_directory: {json.dumps(working_directory)}\n")


def write_workspace() -> str:
    """The workspace file for `dagster dev`, (re)written under DAGSTER_HOME for this directory."""
    path = paths.dagster_workspace_path()
    text = workspace_yaml(os.getcwd())
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return str(path)


def cmd_ui(args: argparse.Namespace) -> int:
    from flywheel_pipeline.instance import ensure_local_dagster_home

    ensure_local_dagster_home()
    # the dagster of this environment (the one that can import flywheel_pipeline), not whichever
    # comes first on PATH
    beside = os.path.join(os.path.dirname(sys.executable), "dagster")
    dagster = beside if os.access(beside, os.X_OK) else shutil.which("dagster")
    if dagster is None:
        print("flywheel ui: no `dagster` command in this environment (pip install dagster-webserver)", file=sys.stderr)
        return 1
    argv = [dagster, "dev", "-w", write_workspace(), "--host", args.host, "--port", str(args.port)]
    say("exec " + " ".join(argv))
    os.execv(argv[0], argv)
    return 0  # pragma: no cover


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "ui", help="start `dagster dev` on the local instance")
    p.add_argument("--host", default="127.0.0.1", help="address the Dagster UI listens on")
    p.add_argument("--port", type=int, default=3000, help="port of the Dagster UI")
    p.set_defaults(func=cmd_ui)
