"""Checks every process makes before it starts its work, so that a deployment mistake is one clear line
at start (and a non-zero exit) instead of a loop that dies later in a thread while the process lives on."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from shared.errors import ConfigurationError


def check_state_dir(state_dir: Path) -> Path:
    """Create `state_dir` if needed and prove that this process can write in it; returns its absolute path."""
    path = state_dir.absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ConfigurationError(
            f"TENANTMAIL_STATE_DIR {path} is not writable by uid {os.getuid()} ({exc.strerror}): "
            f"point TENANTMAIL_STATE_DIR at a directory that user owns (in a container: a volume)"
        ) from None
    return path
