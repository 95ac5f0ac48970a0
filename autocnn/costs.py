"""What a trial costs to ship: latency, parameters and size, measured before its first epoch.

They depend only on the architecture and the input size, never on training, which is what lets
a multi-objective study prune like with like (autocnn.pruning.DominatedCurvePruner) and mark a
trial outside `study.constraints` before it trains. Latency is measured as `autocnn predict`
runs the model (autocnn.onnx_export.onnx_latency_ms) on `study.latency_device`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autocnn.spec import COSTS, Spec

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from autocnn.data import Dataset
    from autocnn.models import Preprocess

LATENCY_MACHINE_TAG = "autocnn.latency_machine"


def costs_needed(spec: Spec) -> list[str]:
    """The costs the study optimises or bounds, in a fixed order."""
    named = set(spec.study.objective_names) | set(spec.study.constraints or {})
    return [name for name in COSTS if name in named]


@dataclass(frozen=True)
class Costs:
    values: dict[str, float]  # latency_ms, params, size_mb: those the study needs
    machine: str | None  # where latency_ms was measured

    def as_attr(self) -> dict[str, Any]:
        return dict(self.values)


def measure_costs(
    model: nn.Module, facts: dict[str, float], *, spec: Spec, image_size: int, cache: dict[tuple, float]
) -> Costs:
    """The study's costs for this model; `facts` are model_facts' (parameters, weight bytes).

    `cache` keeps each architecture's latency: trials differing only in training settings run
    the same graph, and an ONNX export plus timing costs a second or two.
    """
    from autocnn.onnx_export import machine_name, onnx_latency_ms

    needed = costs_needed(spec)
    values = {"params": float(facts["params_total"]), "size_mb": float(facts["weights_mb"])}
    machine = None
    if "latency_ms" in needed:
        device = spec.study.latency_device
        key = ("onnx", type(model).__name__, int(facts["params_total"]), image_size, device)
        if key not in cache:
            cache[key] = onnx_latency_ms(model, image_size=image_size, device=device)
        values["latency_ms"] = cache[key]
        machine = machine_name(device)
    return Costs({name: values[name] for name in needed}, machine)


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
    from autocnn.objectives import COSTS_ATTR, constraint_values

    if not costs_needed(spec):
        return {}
    costs = measure_costs(model, facts, spec=spec, image_size=image_size, cache=cache)
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
    from sklearn.metrics import accuracy_score, f1_score

    from autocnn.objectives import COSTS_ATTR, primary, study_objectives

    scored = {
        "val_accuracy": float(accuracy_score(evaluation.labels, evaluation.preds)),
        "val_macro_f1": float(f1_score(evaluation.labels, evaluation.preds, average="macro", zero_division=0)),
        "val_loss": float(evaluation.loss),
        primary(spec).metric: best,
        **{str(k): float(v) for k, v in (trial.user_attrs.get(COSTS_ATTR) or {}).items()},
    }
    if "int8_accuracy" in spec.study.objective_names:
        from autocnn.onnx_export import int8_val_accuracy

        scored["int8_accuracy"] = int8_val_accuracy(model, data, pre, seed=spec.seed)
    return [scored[objective.metric] for objective in study_objectives(spec)]
