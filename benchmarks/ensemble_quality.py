"""Beyond one model: does shipping several of a study's trials, or test-time augmentation, beat
the study's best single model on images none of them has seen?

Run: .venv/bin/python benchmarks/ensemble_quality.py [--budget 120] [--seeds 0 1 2] [--regimes ...]
     [--ensemble 3] [--test-limit N] [--work DIR] [--quick]

Fixed here, before any run:

- Regimes: search_quality's four Fashion-MNIST regimes (50 and 200 training images per class,
  scratch and with efficientnet_lite0's ImageNet weights in the hub cache); seeds 0, 1, 2.
- One study per regime and seed: the spec `autocnn init` writes for the folder with the budget,
  run by `autocnn study` (as transfer_quality's "from init").
- From that one study, three finalizes, each refitting on train + val, so every variant learns
  from the same images and is scored once on the same test images:
  1. the best single trial (finalize's default);
  2. `--ensemble K`: forward selection on the trials' saved val predictions, members refit;
  3. `--tta`: the best single trial, with test-time augmentation where val says it helps;
  4. `--distill --ensemble K`: the fastest trial within one standard error of the best on val, refit
     on the ensemble's soft labels, reported beside the same trial refit alone.
  Latency: one image through ONNX Runtime on this machine's CPU, batch 1, the shipped file.
- Targets, on mean test accuracy over seeds per regime: the ensemble >= the best single trial + 1 pp;
  the distilled student within 1 pp of the ensemble at <= 1/3 of its latency (mean latency ratio).
  The TTA rows report what was kept and its effect.

Writes benchmarks/ensemble_quality.md and .json (or the work folder's, with --quick).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: import this checkout's benchmarks
    sys.path.insert(0, str(REPO))

# ruff: noqa: E402 - the imports below need the path set-up above
from benchmarks import search_quality as sq
from benchmarks.datasets import write_imagefolder
from benchmarks.machine import quiet_like_the_cli

DEFAULT_BUDGET_S = 120.0
QUICK_BUDGET_S = 20.0
ENSEMBLE_K = 3
OVER_SINGLE = 0.01
STUDENT_WITHIN = 0.01  # of the ensemble's test accuracy
STUDENT_LATENCY_SHARE = 1 / 3  # of the ensemble's latency

Log = Callable[[str], None]


@dataclass
class Shipped:
    """One finalized variant of a study."""

    accuracy: float | None = None
    latency_ms: float | None = None
    seconds: float | None = None  # finalize's wall time
    what: str = ""  # trials and weights, the TTA policy


@dataclass
class StudyRecord:
    regime: str
    seed: int
    study_seconds: float | None = None
    trials: dict[str, int] = field(default_factory=dict)
    single: Shipped = field(default_factory=Shipped)
    ensemble: Shipped = field(default_factory=Shipped)
    tta: Shipped = field(default_factory=Shipped)
    distill: Shipped = field(default_factory=Shipped)  # the student, taught
    alone: Shipped = field(default_factory=Shipped)  # the same trial refit on the labels alone
    error: str | None = None


def shipped_latency(folder: Path) -> float:
    from autocnn.models.onnx import onnx_file_latency_ms

    size = json.loads((folder / "preprocess.json").read_text())["image_size"]
    return onnx_file_latency_ms(folder / "model.onnx", image_size=int(size))


def finalize_variant(spec: Any, uri: str, folder: Path, **options: Any) -> tuple[Any, Shipped]:
    from autocnn.outputs.finalize import FinalizeOptions, finalize

    started = time.perf_counter()
    result = finalize(spec, FinalizeOptions(tracking_uri=uri, out_dir=folder, **options))
    seconds = time.perf_counter() - started
    return result, Shipped(result.scores.accuracy, shipped_latency(folder), seconds)


def run_study_and_variants(record: StudyRecord, spec_path: Path, k: int, log: Log) -> None:
    """The study, then the three finalizes of it, in the study's own folder and stores."""
    from autocnn.search.options import StudyOptions
    from autocnn.search.study import run_study
    from autocnn.spec.load import load_spec

    folder = spec_path.parent
    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    with contextlib.chdir(folder):
        spec = load_spec(spec_path)
        started = time.perf_counter()
        result = run_study(spec, StudyOptions(tracking_uri=uri), sq.ProgressReporter(log))
        record.study_seconds = time.perf_counter() - started
        record.trials = {state: n for state, n in result.counts.items() if n}
        single, record.single = finalize_variant(spec, uri, folder / "single")
        record.single.what = f"trial {single.trial} ({single.model})"
        log(f"    single: trial {single.trial}, test accuracy {single.scores.accuracy:.3f}")
        ensemble, record.ensemble = finalize_variant(spec, uri, folder / "ensemble", ensemble=k)
        record.ensemble.what = ensemble_text(ensemble)
        log(f"    ensemble: {record.ensemble.what}, test accuracy {ensemble.scores.accuracy:.3f}")
        tta, record.tta = finalize_variant(spec, uri, folder / "tta", tta=True)
        record.tta.what = tta.tta.reason() if tta.tta is not None else "not judged"
        log(f"    tta: {record.tta.what}, test accuracy {tta.scores.accuracy:.3f}")
        student, record.distill = finalize_variant(spec, uri, folder / "distill", distill=True, ensemble=k)
        lesson = student.distill
        if lesson is not None:
            record.distill.what = f"trial {lesson.student_trial} ({student.model}) taught by {lesson.teacher_trials}"
            record.alone = Shipped(
                lesson.alone.accuracy, lesson.alone.latency_ms, None, f"trial {lesson.student_trial}"
            )
        log(f"    distill: {record.distill.what}, test accuracy {student.scores.accuracy:.3f}")


def ensemble_text(result: Any) -> str:
    if result.ensemble is None:
        return f"trial {result.trial} alone (no mix scored better on val)"
    return " + ".join(f"{t} x{w:.2f}" for t, _, w in result.ensemble.members)


def run_all(plan: sq.Plan, k: int, log: Log, seed_done: Callable[[list[StudyRecord]], None]) -> list[StudyRecord]:
    records: list[StudyRecord] = []
    for seed in plan.seeds:
        for name in plan.regimes:
            regime = sq.ALL_REGIMES[name]
            seed_dir = plan.work / regime.data / f"seed-{seed}"
            if not (seed_dir / "data").exists():
                log(f"{regime.data} seed {seed}: writing the images to {seed_dir / 'data'}")
                write_imagefolder(seed_dir / "data", sq.make_images(regime.data, seed, plan.test_limit))
            log(f"{name} seed {seed}: init, study, then single / ensemble / tta finalizes")
            record = StudyRecord(name, seed)
            try:
                spec_path = sq.init_study_spec(regime, seed, seed_dir, seed_dir / name, plan.budget_s)
                run_study_and_variants(record, spec_path, k, log)
            except Exception as exc:  # noqa: BLE001 - recorded, so the other runs still report
                record.error = f"{exc.__class__.__name__}: {exc}".splitlines()[0]
                log(f"    FAILED: {record.error}")
            records.append(record)
        seed_done(records)
    return records


# --------------------------------------------------------------------------- summary


def mean_of(records: Sequence[StudyRecord], regime: str, variant: str) -> float | None:
    values = [getattr(r, variant).accuracy for r in records if r.regime == regime and not r.error]
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def latency_share(records: Sequence[StudyRecord], regime: str) -> float | None:
    """The student's latency over the ensemble's, averaged over the regime's studies."""
    shares = [
        r.distill.latency_ms / r.ensemble.latency_ms
        for r in records
        if r.regime == regime and not r.error and r.distill.latency_ms and r.ensemble.latency_ms
    ]
    return statistics.fmean(shares) if shares else None


def targets(regimes: Sequence[str], records: Sequence[StudyRecord]) -> list[sq.Target]:
    out = []
    for name in regimes:
        out.append(
            sq.Target(
                name,
                f"ensemble >= best single + {OVER_SINGLE * 100:.0f} pp",
                mean_of(records, name, "ensemble"),
                mean_of(records, name, "single"),
                OVER_SINGLE,
                "best single",
            )
        )
        out.append(
            sq.Target(
                name,
                f"distilled student >= ensemble - {STUDENT_WITHIN * 100:.0f} pp",
                mean_of(records, name, "distill"),
                mean_of(records, name, "ensemble"),
                -STUDENT_WITHIN,
                "ensemble",
            )
        )
    return out


def _cell(shipped: Shipped) -> str:
    if shipped.accuracy is None:
        return "—"
    latency = f", {shipped.latency_ms:.2f} ms" if shipped.latency_ms is not None else ""
    return f"{shipped.accuracy:.3f}{latency}"


def render(payload: dict[str, Any], records: Sequence[StudyRecord]) -> str:
    lines = [
        "# Beyond one model: an ensemble of a study's trials, and test-time augmentation",
        "",
        sq.source_line(payload["source"]),
        "",
        "| regime | seed | trials | best single (test acc, latency) | ensemble | TTA | distilled student | "
        "student alone | ensemble members (trial x weight) | TTA decision | student | "
        "finalize s (single / ensemble / TTA / distill) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r.error:
            lines.append(f"| {r.regime} | {r.seed} | failed: {r.error} | | | | | | | | | |")
            continue
        trials = ", ".join(f"{n} {s.lower()}" for s, n in r.trials.items())
        seconds = " / ".join(
            f"{v.seconds:.0f}" if v.seconds is not None else "—" for v in (r.single, r.ensemble, r.tta, r.distill)
        )
        lines.append(
            f"| {r.regime} | {r.seed} | {trials} | {r.single.what}: {_cell(r.single)} | {_cell(r.ensemble)} | "
            f"{_cell(r.tta)} | {_cell(r.distill)} | {_cell(r.alone)} | {r.ensemble.what} | {r.tta.what} | "
            f"{r.distill.what} | {seconds} |"
        )
    lines += [
        "",
        "| regime | mean test accuracy: single / ensemble / TTA / student / student alone | target | figure | |",
        "|---|---|---|---|---|",
    ]
    for target in targets(payload["regimes"], records):
        variants = ("single", "ensemble", "tta", "distill", "alone")
        means = " / ".join(sq.fmt(mean_of(records, target.regime, v)) for v in variants)
        lines.append(
            f"| {target.regime} | {means} | {target.what} | {sq.target_figure(target)} | {sq.verdict(target.met)} |"
        )
    lines += ["", "| regime | student latency / ensemble latency (mean over seeds) | target | |", "|---|---|---|---|"]
    for name in payload["regimes"]:
        share = latency_share(records, name)
        met = None if share is None else share <= STUDENT_LATENCY_SHARE
        lines.append(f"| {name} | {sq.fmt(share, '.2f')} | <= 0.33 | {sq.verdict(met)} |")
    lines += [
        "",
        "- Each row is one study; its four variants are finalized from it, each refit on train + val, and "
        "scored once on the same test images. The ensemble's best single member is the single variant's trial, "
        "refit the same way.",
        f"- Ensemble: `autocnn finalize --ensemble {payload['source']['ensemble']}` (forward selection with "
        "replacement on the trials' saved val predictions). TTA: `autocnn finalize --tta` (views judged on val "
        "with the trial's own weights, kept only beyond the noise).",
        "- Latency: one image through ONNX Runtime (CPU, batch 1) on the shipped model.onnx.",
        "- Distillation: `autocnn finalize --distill --ensemble K`: the fastest trial within one standard error of "
        "the best on val, refit on train + val against the ensemble's soft labels (temperature 2, half teacher, half "
        "label; on val, the members' search-time predictions); 'student "
        "alone' is the same trial refit on the labels, from the same finalize.",
        "- Differences that remain: the ensemble's, TTA's and distillation's finalizes cost more time than the "
        "single one's (the table's last column); the study's budget is the same for all of them.",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, source: dict[str, Any], regimes: list[str], records: list[StudyRecord]) -> str:
    payload = {
        "source": source,
        "regimes": regimes,
        "studies": [asdict(r) for r in records],
        "targets": [asdict(t) | {"met": t.met} for t in targets(regimes, records)],
    }
    (out / "ensemble_quality.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    text = render(payload, records)
    (out / "ensemble_quality.md").write_text(text)
    return text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sq.add_real_regime_args(parser, budget_help="per study (default 120 s)")
    parser.add_argument("--ensemble", type=int, default=ENSEMBLE_K, help="at most this many members")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_like_the_cli()
    budget = args.budget or (QUICK_BUDGET_S if args.quick else DEFAULT_BUDGET_S)
    plan = sq.real_regime_plan(args, budget)
    run = sq.BenchRun.of("benchmarks/ensemble_quality.py", argv)
    out = plan.work if args.quick else REPO / "benchmarks"
    run.log(f"work folder {plan.work}; budget {budget:.0f} s per study; seeds {list(plan.seeds)}")

    def write(records: list[StudyRecord], *, final: bool) -> str:
        source = run.source(plan, final=final, ensemble=args.ensemble)
        return write_outputs(out, source, list(plan.regimes), records)

    records = run_all(plan, args.ensemble, run.log, seed_done=lambda so_far: write(so_far, final=False))
    print(write(records, final=True))
    print(f"wrote {out / 'ensemble_quality.md'} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
