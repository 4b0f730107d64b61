"""What the benchmark scripts share: each timed phase runs in a fresh process of the same
script (``--phase NAME`` plus the script's own options), prints one JSON line as its last
output, and reports its own peak memory."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident memory of this process. VmHWM (Linux) belongs to this process image;
    ru_maxrss is inherited across exec from the parent, which may have generated the data."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_phase(script: str, name: str, *options: str) -> dict:
    """Run ``script --phase name *options`` in a new process and return its JSON result."""
    out = subprocess.run([sys.executable, script, "--phase", name, *options],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def best_of(runs: list[dict]) -> dict:
    """The fastest of repeated runs of one phase."""
    return min(runs, key=lambda r: r["seconds"])
