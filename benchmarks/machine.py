"""The machine a benchmark runs on, and autocnn run on it as its command line runs it."""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    """The CPU's model name: on Linux `platform.processor()` gives only the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What a figure depends on besides the code: CPU, device, torch build, threads, load."""
    import torch

    from autocnn.training.loop import cpu_has_native_bf16, pick_device

    device = pick_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "device": f"{device.type} ({name})",
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": "yes" if cpu_has_native_bf16() else "no",
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "load_before": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "commit": code_commit(),
    }


def code_commit() -> str:
    """The checkout's commit, `+changes` when files differ from it: the code a figure belongs to."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short=10", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    return commit + (" +changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def quiet_machine(max_load: float = 1.3) -> bool:
    """A busy machine lowers absolute images/s; results.md says so when a run starts under load."""
    return os.getloadavg()[0] < max_load


def autocnn_command() -> list[str]:
    """The `autocnn` script installed beside this interpreter, else `python -m autocnn`."""
    script = Path(sys.executable).with_name("autocnn")
    return [str(script)] if script.exists() else [sys.executable, "-m", "autocnn"]


def quiet_like_the_cli() -> None:
    """The library settings `autocnn study` makes for itself, so a study started here logs as
    little as a user's: MLflow at WARNING without artifact progress bars, no Optuna trial lines."""
    import optuna

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
