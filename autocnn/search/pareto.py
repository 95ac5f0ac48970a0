"""The Pareto front of a study, and the small rule language that picks one trial from it.

A multi-objective study has no single best trial: it has a front of trials none of which is beaten
on every objective by another. Only complete trials within `study.constraints` are on it (the
others are kept and shown, never chosen). `finalize --pick` names the trade-off in a rule:

    max val_accuracy where latency_ms <= 5 and size_mb < 4
    min latency_ms where val_accuracy >= 0.95

Grammar: `(max|min) NAME [where NAME OP NUMBER (and NAME OP NUMBER)*]`, OP one of `<= < >= >`,
NAME one of the study's objectives or recorded costs (latency_ms, params, size_mb). The rule is
tokenised and checked word by word; nothing in it is evaluated as code.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autocnn.errors import StudyError
from autocnn.search.costs import trial_costs
from autocnn.spec.fields import OBJECTIVES
from autocnn.spec.objectives import Objective

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}
QUANTITIES = tuple(OBJECTIVES)  # what a --pick rule can name: every objective a study can have
_TOKEN = re.compile(r"\s*(<=|>=|<|>|[A-Za-z_][A-Za-z0-9_]*|[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)")
MAX_RULE = 500  # characters: a rule is a sentence, not a program


# --------------------------------------------------------------------------- what a trial scored


def trial_quantities(trial: FrozenTrial, objectives: Sequence[Objective]) -> dict[str, float]:
    """Every number a rule can name for this trial: its objective values, then its recorded costs."""
    found = dict(trial_costs(trial))
    for objective in objectives:
        value = objective.of(trial)
        if value is not None:
            found[objective.metric] = value
    return found


def dominates(a: Sequence[float], b: Sequence[float], objectives: Sequence[Objective]) -> bool:
    """`a` is no worse than `b` on every objective and better on one."""
    pairs = [(o.rank(x), o.rank(y)) for o, x, y in zip(objectives, a, b, strict=True)]
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def pareto_front(study: optuna.Study, objectives: Sequence[Objective]) -> list[FrozenTrial]:
    """Feasible complete trials that no other feasible complete trial dominates, by trial number."""
    from autocnn.search.results import complete_trials

    trials = [t for t in complete_trials(study) if t.values is not None and all(map(math.isfinite, t.values))]
    values = {t.number: [objective.of(t) or 0.0 for objective in objectives] for t in trials}
    front = [t for t in trials if not any(dominates(values[o.number], values[t.number], objectives) for o in trials)]
    return sorted(front, key=lambda t: t.number)


def front_record(study: optuna.Study, objectives: Sequence[Objective], constraints: dict[str, float]) -> dict[str, Any]:
    """The front as MLflow's parent run keeps it (pareto_front.json) and the report shows it."""
    front = pareto_front(study, objectives)
    return {
        "objectives": [{"metric": o.metric, "direction": o.direction} for o in objectives],
        "constraints": {name: {"max": bound} for name, bound in constraints.items()},
        "front": [
            {
                "trial": t.number,
                "model": t.params.get("model", ""),
                "values": trial_quantities(t, objectives),
                "run_id": t.user_attrs.get("mlflow_run_id"),
            }
            for t in front
        ],
    }


# --------------------------------------------------------------------------- the pick rule


@dataclass(frozen=True)
class Condition:
    name: str
    op: str
    bound: float

    def holds(self, value: float | None) -> bool:
        return value is not None and OPERATORS[self.op](value, self.bound)

    def __str__(self) -> str:
        return f"{self.name} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class PickRule:
    """`max NAME where ...`: the trial with the best NAME among those meeting every condition."""

    goal: str  # "max" | "min"
    name: str
    conditions: tuple[Condition, ...] = ()

    def __str__(self) -> str:
        where = f" where {' and '.join(map(str, self.conditions))}" if self.conditions else ""
        return f"{self.goal} {self.name}{where}"


def _tokens(text: str) -> list[str]:
    tokens, at = [], 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        match = _TOKEN.match(text, at)
        if match is None:
            raise StudyError(f"--pick: cannot read {text[at:].strip()[:20]!r} in {text!r}")
        tokens.append(match.group(1))
        at = match.end()
    return tokens


def _name(token: str | None, rule: str) -> str:
    if token not in QUANTITIES:
        got = "nothing" if token is None else repr(token)
        raise StudyError(f"--pick: expected one of {', '.join(QUANTITIES)}, got {got} in {rule!r}")
    return token


def _number(token: str | None, rule: str) -> float:
    try:
        value = float(token)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise StudyError(f"--pick: expected a number, got {token!r} in {rule!r}") from None
    if not math.isfinite(value):
        raise StudyError(f"--pick: expected a finite number, got {token!r} in {rule!r}")
    return value


def parse_rule(text: str) -> PickRule:
    """`max val_accuracy where latency_ms <= 5` -> PickRule; a user error names the bad word."""
    if len(text) > MAX_RULE:
        raise StudyError(f"--pick: a rule is at most {MAX_RULE} characters, got {len(text)}")
    tokens = _tokens(text)
    rest = [t.lower() if t.isalpha() else t for t in tokens]
    if not rest or rest[0] not in ("max", "min"):
        raise StudyError(
            f"--pick: a rule starts with max or min, as in 'max val_accuracy where latency_ms <= 5', got {text!r}"
        )
    goal, name = rest[0], _name(rest[1] if len(rest) > 1 else None, text)
    conditions: list[Condition] = []
    at = 2
    if at < len(rest):
        if rest[at] != "where":
            raise StudyError(f"--pick: expected 'where' after {goal} {name}, got {rest[at]!r} in {text!r}")
        at += 1
        while True:
            cname = _name(rest[at] if at < len(rest) else None, text)
            op = rest[at + 1] if at + 1 < len(rest) else None
            if op not in OPERATORS:
                raise StudyError(f"--pick: expected one of {' '.join(OPERATORS)} after {cname}, got {op!r} in {text!r}")
            conditions.append(Condition(cname, op, _number(rest[at + 2] if at + 2 < len(rest) else None, text)))
            at += 3
            if at >= len(rest):
                break
            if rest[at] != "and":
                raise StudyError(f"--pick: expected 'and' between conditions, got {rest[at]!r} in {text!r}")
            at += 1
    return PickRule(goal, name, tuple(conditions))


@dataclass(frozen=True)
class Pick:
    """The chosen trial, the words that chose it, and its trade-off (for the exported bundle)."""

    trial: FrozenTrial
    rule: str
    reason: str
    values: dict[str, float]
    front: tuple[int, ...]


def pick_from_front(study: optuna.Study, objectives: Sequence[Objective], primary: Objective, rule: str | None) -> Pick:
    """Apply a rule to the front; without one, the most accurate feasible trial, saying so."""
    from autocnn.search.results import best_trial, no_complete_trial

    front = pareto_front(study, objectives)
    numbers = tuple(t.number for t in front)
    if not front:
        raise StudyError(no_complete_trial(study))
    if rule is None:
        best = best_trial(study, primary)
        assert best is not None  # a non-empty front has a feasible complete trial
        reason = f"no --pick rule: the feasible trial with the best {primary.metric}"
        return Pick(
            best,
            f"{'max' if primary.maximize else 'min'} {primary.metric}",
            reason,
            trial_quantities(best, objectives),
            numbers,
        )
    parsed = parse_rule(rule)
    scored = [(t, trial_quantities(t, objectives)) for t in front]
    missing = [n for n in {parsed.name, *(c.name for c in parsed.conditions)} if not any(n in q for _, q in scored)]
    if missing:
        raise StudyError(
            f"--pick: the study recorded no {', '.join(sorted(missing))}; use {', '.join(sorted(scored[0][1]))}"
        )
    meeting = [(t, q) for t, q in scored if all(c.holds(q.get(c.name)) for c in parsed.conditions) and parsed.name in q]
    if not meeting:
        shown = "; ".join(
            f"trial {t.number}: " + ", ".join(f"{c.name} {q.get(c.name, math.nan):.4g}" for c in parsed.conditions)
            for t, q in scored[:5]
        )
        raise StudyError(
            f"--pick: no trial on the Pareto front meets {' and '.join(map(str, parsed.conditions))} ({shown})"
        )
    sign = -1.0 if parsed.goal == "max" else 1.0
    chosen, values = min(meeting, key=lambda item: (sign * item[1][parsed.name], item[0].number))
    reason = f"{parsed} on the Pareto front of {len(front)} trial(s), {len(meeting)} meeting the conditions"
    return Pick(chosen, str(parsed), reason, values, numbers)
