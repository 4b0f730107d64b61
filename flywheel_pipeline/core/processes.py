"""Whether a process of this machine still exists."""

from __future__ import annotations

import os


def pid_exists(pid: int) -> bool:
    """True while a process with this pid exists (also one of another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
