"""A trial's costs and objective values, kept on its Optuna trial: the search's side of
training.costs (which measures them) and spec.objectives (which names them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autocnn.spec.objectives import constraint_values, primary, study_objectives
from autocnn.training.costs import costs_needed, measure_costs

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from autocnn.data.arrays import Dataset
    from autocnn.models.catalog import Preprocess
    from autocnn.spec.schema import Spec

# Optuna user attribute: the trial's costs {name: value}, recorded before its first epoch.
COSTS_ATTR = "autocnn.costs"
LATENCY_MACHINE_TAG = "autocnn.latency_machine"


def trial_costs(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    raw: Any = trial.user_attrs.get(COSTS_ATTR) or {}
    return {str(k): float(v) for k, v in raw.items()}


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial that broke no constraint (one without constraints is feasible)."""
    return all(value <= 0.0 for value in trial.constraints.values())


def record_costs(
    spec: Spec,
    trial: optuna.Trial,
    model: nn.Module,
    facts: dict[str, float],
    *,
    image_size: int,
    cache: dict[tuple, float],
) -> dict[str, float]:
    """Measure the costs the study needs, keep them on the trial and mark it against the
    constraints before it trains: the pruner compares like with like, samplers learn feasibility.

    Returns what to log beside model_facts: the latency measured as `predict` runs the model
    replaces the training-device forward time, so the report and the objective show one number.
    """
    if not costs_needed(spec.study):
        return {}
    costs = measure_costs(
        model,
        facts,
        needed=costs_needed(spec.study),
        latency_device=spec.study.latency_device,
        image_size=image_size,
        cache=cache,
    )
    trial.set_user_attr(COSTS_ATTR, costs.as_attr())
    for name, excess in constraint_values(costs.values, spec.study.constraints or {}).items():
        trial.set_constraint(name, excess)
    if costs.machine is not None:
        trial.set_user_attr(LATENCY_MACHINE_TAG, costs.machine)
    return {"latency_ms": costs.values["latency_ms"]} if "latency_ms" in costs.values else {}


def objective_values(
    spec: Spec, trial: optuna.Trial, evaluation: Any, best: float, *, model: nn.Module, data: Dataset, pre: Preprocess
) -> list[float]:
    """One value per objective: validation metrics at the best epoch, the recorded costs, and
    the int8 model's val accuracy when asked for. `best` is the training metric's best value."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    scored = {
        "val_accuracy": float(accuracy_score(evaluation.labels, evaluation.preds)),
        "val_macro_f1": float(f1_score(evaluation.labels, evaluation.preds, average="macro", zero_division=0)),
        "val_balanced_accuracy": float(balanced_accuracy_score(evaluation.labels, evaluation.preds)),
        "val_loss": float(evaluation.loss),
        primary(spec).metric: best,
        **{str(k): float(v) for k, v in (trial.user_attrs.get(COSTS_ATTR) or {}).items()},
    }
    if "int8_accuracy" in spec.study.objective_names:
        from autocnn.models.onnx import int8_val_accuracy

        scored["int8_accuracy"] = int8_val_accuracy(model, data, pre, seed=spec.seed)
    return [scored[objective.metric] for objective in study_objectives(spec)]
