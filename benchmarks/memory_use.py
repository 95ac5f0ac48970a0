"""Item 5: peak memory of real studies, and the image cache's size against the raw uint8 images."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.machine import autocnn_command
from benchmarks.results import Item, Row
from benchmarks.specs import study_file, write_spec
from benchmarks.synthetic import write_class_folders
from benchmarks.timing import timed

TARGET_CACHE_TIMES = 1.5  # the cache may hold at most this much more than the raw images

# Runs a command in a child and prints that child's peak RSS (KiB), so the parent's own memory
# (this benchmark's) never counts.
PEAK_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(rc)\n"
)

# Loads a spec's images into autocnn's DataCache in a fresh process, every import done first, and
# prints VmRSS and VmHWM (peak, reset before loading) around the load.
CACHE_PROBE = """
import json, sys
from pathlib import Path
import numpy, PIL.Image, sklearn.model_selection
from autocnn.data.cache import DataCache
from autocnn.spec.load import load_spec

def mem():
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out

spec = load_spec(sys.argv[1])
try:
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
except OSError:
    pass
before = mem()
data = DataCache(spec.data, seed=spec.seed).get()
after = mem()
n = sum(len(s) for s in (data.train, data.val, data.test) if s is not None)
print(json.dumps({"before": before, "after": after, "nbytes": data.nbytes, "n": n, "size": spec.data.image_size}))
"""


def peak_rss_mb(cmd: Sequence[str], *, cwd: Path) -> float:
    """Peak RSS of a command run in its own child (ru_maxrss of the waited-for child, KiB)."""
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_WRAPPER, *cmd], cwd=cwd, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return int(proc.stdout.strip().splitlines()[-1]) / 1024


def digits_study_spec(work: Path) -> Path:
    """studies/digits.yaml cut to 2 trials."""
    raw = study_file("digits")
    raw["study"]["trials"] = 2
    return write_spec(work / "mem-digits", raw)


def imagefolder_study_spec(work: Path, n: int, epochs: int) -> Path:
    """One custom-CNN trial over `n` generated 96 px images in class folders."""
    root = write_class_folders(work / "data" / "mem", n, 96, 10, seed=2)
    raw = {
        "name": "mem-imagefolder",
        "seed": 0,
        "data": {"source": "imagefolder", "root": str(root), "split": {"val": 0.15, "test": 0.15}, "image_size": 96},
        "study": {"trials": 1, "metric": "val_accuracy", "pruner": "none"},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4},
        "models": {"custom_cnn": {"depth": 4, "width": 32, "dropout": 0.2}},
    }
    return write_spec(work / "mem", raw)


def cache_probe(spec: Path, *, cwd: Path) -> dict[str, Any]:
    probe = subprocess.run(
        [sys.executable, "-c", CACHE_PROBE, str(spec)], capture_output=True, text=True, check=True, cwd=cwd
    )
    return json.loads(probe.stdout.strip().splitlines()[-1])


def measure_memory(work: Path, *, images: int, epochs: int) -> Item:
    """Item 5: two `autocnn study` runs' peak RSS, and the cache probe's growth over the raw bytes."""
    item = Item(5, "Memory")
    cmd = autocnn_command()
    with timed(item):
        digits_spec = digits_study_spec(work)
        digits_mb = peak_rss_mb([*cmd, "study", str(digits_spec), "--trials", "2"], cwd=digits_spec.parent)
        folder_spec = imagefolder_study_spec(work, images, epochs)
        folder_mb = peak_rss_mb([*cmd, "study", str(folder_spec)], cwd=folder_spec.parent)
        cache = cache_probe(folder_spec, cwd=work)
    raw_bytes = cache["n"] * cache["size"] ** 2 * 3
    steady = (cache["after"]["VmRSS"] - cache["before"]["VmRSS"]) / raw_bytes
    peak = (cache["after"]["VmHWM"] - cache["before"]["VmRSS"]) / raw_bytes
    target = f"<= {TARGET_CACHE_TIMES}x"
    item.rows += [
        Row("peak RSS, digits study (2 trials, `autocnn study`)", f"{digits_mb:,.0f} MB"),
        Row(
            f"peak RSS, {cache['n']:,}-image 96 px imagefolder study (1 trial, {epochs} epochs)",
            f"{folder_mb:,.0f} MB",
        ),
        Row("raw uint8 size of those images", f"{raw_bytes / 1e6:.1f} MB"),
        Row("**image cache RSS / raw size** (after loading)", f"{steady:.2f}x", target, steady <= TARGET_CACHE_TIMES),
        Row("peak RSS growth while decoding / raw size", f"{peak:.2f}x", target, peak <= TARGET_CACHE_TIMES),
    ]
    item.raw = {
        "digits_peak_mb": digits_mb,
        "imagefolder_peak_mb": folder_mb,
        "cache_probe": cache,
        "raw_bytes": raw_bytes,
    }
    item.notes.append(
        "Peak RSS: `ru_maxrss` of the `autocnn study` child process. Cache: a fresh process imports everything first, "
        "then loads the DataCache; growth of VmRSS (and of VmHWM, reset before loading) over the raw N x 96 x 96 x 3 bytes."
    )
    return item
