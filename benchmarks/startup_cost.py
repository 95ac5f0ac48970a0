"""Item 4: what a user waits for before training starts: `autocnn --help`, `validate`, and each
trial's fixed cost outside its epochs (from item 1's trials)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from benchmarks.machine import autocnn_command
from benchmarks.results import Item, Row
from benchmarks.specs import study_file, write_spec
from benchmarks.synthetic import write_class_folders
from benchmarks.timed_study import TrialTiming
from benchmarks.timing import median, timed

HEAVY_MODULES = ("torch", "mlflow", "optuna", "timm", "albumentations", "sklearn", "cv2", "matplotlib")
TARGET_HELP_S = 0.5
TARGET_FIXED_S = 1.0

# Runs autocnn's CLI in-process, then names the heavy modules it imported.
HEAVY_PROBE = """
import runpy, sys
sys.argv = ["autocnn", *sys.argv[1:]]
try:
    runpy.run_module("autocnn", run_name="__main__")
except SystemExit:
    pass
print("HEAVY:" + ",".join(m for m in {mods!r} if m in sys.modules), file=sys.stderr)
"""


def run_seconds(cmd: Sequence[str], *, cwd: Path, repeats: int) -> tuple[float, list[float]]:
    """Median wall time of a command (after one untimed run that warms the disk cache)."""
    subprocess.run(cmd, cwd=cwd, capture_output=True, check=False)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return median(times), times


def heavy_imports(args: Sequence[str], cwd: Path) -> list[str]:
    """The heavy modules `autocnn <args>` imports: each one is start-up time a user waits for."""
    probe = HEAVY_PROBE.format(mods=HEAVY_MODULES)
    proc = subprocess.run([sys.executable, "-c", probe, *args], cwd=cwd, capture_output=True, text=True, check=False)
    line = [x for x in proc.stderr.splitlines() if x.startswith("HEAVY:")]
    return [m for m in line[-1].removeprefix("HEAVY:").split(",") if m] if line else ["?"]


def twenty_classes_spec(work: Path) -> Path:
    """studies/20classes.yaml over a generated 20-class folder (its comment's own-folder variant, at
    the spec's image size) instead of CIFAR-100; timm models without downloads."""
    raw = study_file("20classes")
    root = write_class_folders(work / "data" / "20classes", 20 * 20, 32, 20, seed=1)
    size = raw["data"]["image_size"]
    raw["data"] = {"source": "imagefolder", "root": str(root), "split": {"val": 0.15, "test": 0.15}, "image_size": size}
    for name, space in raw["models"].items():
        if name != "custom_cnn":
            space["pretrained"] = False
    return write_spec(work / "specs", raw)


def measure_startup(work: Path, *, repeats: int, timings: dict[str, list[TrialTiming]]) -> Item:
    """Item 4; `timings` are item 1's trials, whose fixed cost it reports."""
    item = Item(4, "Start-up and fixed per-trial cost")
    cmd = autocnn_command()
    with timed(item):
        help_s, help_all = run_seconds([*cmd, "--help"], cwd=work, repeats=repeats)
        spec = twenty_classes_spec(work)
        validate_s, validate_all = run_seconds([*cmd, "validate", str(spec)], cwd=work, repeats=repeats)
        checks_s, checks_all = run_seconds([*cmd, "validate", "--no-probe", str(spec)], cwd=work, repeats=repeats)
        heavy_help = heavy_imports(["--help"], work)
        heavy_validate = heavy_imports(["validate", str(spec)], work)
    item.rows += [
        Row("`autocnn --help`", f"{help_s:.2f} s", f"<= {TARGET_HELP_S} s", help_s <= TARGET_HELP_S),
        Row("`autocnn validate --no-probe studies/20classes.yaml` (generated 20-class folder)", f"{checks_s:.2f} s"),
        Row(
            "`autocnn validate studies/20classes.yaml`, with the plan's timed probe of each model family",
            f"{validate_s:.2f} s",
        ),
    ]
    item.raw = {
        "help_s": help_all,
        "validate_no_probe_s": checks_all,
        "validate_s": validate_all,
        "heavy_help": heavy_help,
        "heavy_validate": heavy_validate,
    }
    for label, trials in timings.items():
        if trials:
            item.rows.append(fixed_cost_row(label, trials))
            item.raw[f"fixed_s {label}"] = [asdict(t) for t in trials]
    item.notes += [
        f"Median of {repeats} runs each, after one untimed run. Heavy modules imported by `--help`: "
        f"{', '.join(heavy_help) or 'none'}; by `validate` (a spec naming timm backbones): {', '.join(heavy_validate) or 'none'}.",
        "`validate` checks the spec and decodes the data; by default it also times a few training steps of each "
        "model family's default configuration (here a custom CNN and three backbones) so the plan can say how long "
        "trials take: that probe is most of its time, and `--no-probe` skips it.",
        "Fixed per-trial overhead: Optuna's trial start-to-complete wall time minus every epoch interval (item 1's trials): "
        "sampling, MLflow run creation and params, model build, model facts, final evaluation, confusion matrix and per-class "
        "artifacts, best weights, run close. The first trial of a process also pays one-off imports (timm, matplotlib).",
    ]
    return item


def fixed_cost_row(label: str, trials: list[TrialTiming]) -> Row:
    fixed = median([t.fixed_s for t in trials])
    before, after = median([t.before_s for t in trials]), median([t.after_s for t in trials])
    return Row(
        f"fixed per-trial overhead, {label}",
        f"{fixed:.2f} s (before epoch 1: {before:.2f} s, after the last: {after:.2f} s; first trial {trials[0].fixed_s:.2f} s)",
        f"<= {TARGET_FIXED_S:g} s",
        fixed <= TARGET_FIXED_S,
    )
