"""Does a user who runs `autocnn init` and `autocnn study` transfer ImageNet weights as well as a
careful practitioner? The search-quality benchmark's regimes and baselines, with autocnn started
from the spec that `init` writes.

Run: .venv/bin/python benchmarks/transfer_quality.py [--budget 15m] [--seeds 0 1 2] [--test-limit N]
     [--regimes ...] [--work DIR] [--quick]

Fixed here, before any run:

- Regimes: search_quality's four Fashion-MNIST regimes (50 and 200 training images per class,
  scratch and with efficientnet_lite0's ImageNet weights in the hub cache). A scratch regime's
  `init` runs with an empty hub cache, so it proposes no backbone.
- Methods: autocnn from `init`'s spec (its budget is `init`'s budget and the study's timeout;
  only the name and seed are set), then `finalize`; on pretrained regimes the linear probe and the
  fixed full fine-tune of benchmarks/baselines.py with the same budget.
- Targets, on mean test accuracy over seeds: on each pretrained regime autocnn from init >= the
  linear probe + 3 pp and >= the fixed fine-tune + 2 pp; and each pretrained regime's autocnn
  >= the scratch regime's autocnn (same images) + 5 pp ("by a wide margin").

Writes benchmarks/transfer_quality.md, .json and .png (or the work folder's, with --quick).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: import this checkout's benchmarks
    sys.path.insert(0, str(REPO))

# ruff: noqa: E402 - the imports below need the path set-up above
from benchmarks import search_quality as sq
from benchmarks.machine import quiet_like_the_cli

METHODS = ("linear-probe", "fixed-finetune", "from-init")
DEFAULT_BUDGET_S = 15 * 60.0
QUICK_BUDGET_S = 30.0
OVER_PROBE = 0.03
OVER_FINETUNE = 0.02
PRETRAINED_OVER_SCRATCH = 0.05


def targets(regimes: Sequence[str], records: Sequence[sq.RunRecord]) -> list[sq.Target]:
    """The issue's targets for each pretrained regime run, against its baselines and its scratch twin."""
    out: list[sq.Target] = []
    for name in regimes:
        regime = sq.ALL_REGIMES[name]
        if not regime.pretrained:
            continue
        ours = sq.method_mean(records, name, "from-init")
        for method, margin in (("linear-probe", OVER_PROBE), ("fixed-finetune", OVER_FINETUNE)):
            what = f"autocnn from init >= {method} + {margin * 100:.0f} pp"
            out.append(sq.Target(name, what, ours, sq.method_mean(records, name, method), margin, method))
        scratch = f"{regime.data}-scratch"
        if scratch in regimes:
            what = f"pretrained >= scratch + {PRETRAINED_OVER_SCRATCH * 100:.0f} pp (both from init)"
            other = sq.method_mean(records, scratch, "from-init")
            out.append(sq.Target(name, what, ours, other, PRETRAINED_OVER_SCRATCH, f"{scratch} from init"))
    return out


def notes(budget_s: float) -> list[str]:
    return [
        "autocnn from init: `autocnn init` on the regime's folder (train/val/test as written) with "
        f"`--budget {budget_s:.0f}s`, on this machine (its timed probe sizes each backbone's input), then "
        "`autocnn study` and `autocnn finalize` (refit on train + val) with their defaults. The spec is init's "
        "file as written, its name and seed set per seed.",
        "Baselines and regimes as in the search-quality section (benchmarks/search_quality.py): the linear probe "
        "and the fixed full fine-tune train on train + val in fp32 within the same budget.",
        "Differences that remain: autocnn's finalize runs after the budget; init's timed probe (a few training "
        "steps) runs before it; autocnn trains with `train.precision: auto`.",
        f"Targets, fixed before the run: autocnn from init >= linear probe + {OVER_PROBE * 100:.0f} pp and >= fixed "
        f"fine-tune + {OVER_FINETUNE * 100:.0f} pp on each pretrained regime; pretrained >= scratch + "
        f"{PRETRAINED_OVER_SCRATCH * 100:.0f} pp. A missed target stays in the table.",
    ]


def render(payload: dict[str, Any], records: Sequence[sq.RunRecord]) -> str:
    lines = [
        "# Transfer learning on real images: autocnn from `init` vs a linear probe and a fixed fine-tune",
        "",
        sq.source_line(payload["source"]),
        "",
        "![test accuracy per method and regime](transfer_quality.png)",
        "",
        *sq.method_table(payload, records),
        "| regime | target (mean over seeds) | figure | |",
        "|---|---|---|---|",
    ]
    for target in targets(payload["regimes"], records):
        lines.append(f"| {target.regime} | {target.what} | {sq.target_figure(target)} | {sq.verdict(target.met)} |")
    lines += ["", *(f"- {note}" for note in notes(payload["source"]["budget_s"]))]
    lines += [f"- failed: {r.regime} seed {r.seed} {r.method}: {r.error}" for r in records if r.error]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, source: dict[str, Any], regimes: list[str], records: list[sq.RunRecord]) -> str:
    payload = {
        "source": source,
        "regimes": regimes,
        "runs": [asdict(r) for r in records],
        "targets": [asdict(t) | {"met": t.met} for t in targets(regimes, records)],
    }
    (out / "transfer_quality.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    sq.write_figure(payload, records, out / "transfer_quality.png")
    text = render(payload, records)
    (out / "transfer_quality.md").write_text(text)
    return text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sq.add_real_regime_args(parser, budget_help="per method and seed (default 15m)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_like_the_cli()
    budget = args.budget or (QUICK_BUDGET_S if args.quick else DEFAULT_BUDGET_S)
    plan = sq.real_regime_plan(args, budget, METHODS)
    run = sq.BenchRun.of("benchmarks/transfer_quality.py", argv)
    out = plan.work if args.quick else REPO / "benchmarks"
    run.log(f"work folder {plan.work}; budget {budget:.0f} s per method and seed; seeds {list(plan.seeds)}")

    def write(records: list[sq.RunRecord], *, final: bool) -> str:
        return write_outputs(out, run.source(plan, final=final), list(plan.regimes), records)

    records = sq.run_all(plan, run.log, seed_done=lambda so_far: write(so_far, final=False))
    print(write(records, final=True))
    print(f"wrote {out / 'transfer_quality.md'}, .json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
