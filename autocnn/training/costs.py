"""What a trial costs to ship: latency, parameters and size, measured before its first epoch.

They depend only on the architecture and the input size, never on training, which is what lets
a multi-objective study prune like with like (autocnn.search.pruning.DominatedCurvePruner) and mark a
trial outside `study.constraints` before it trains. Latency is measured as `autocnn predict`
runs the model (autocnn.models.onnx.onnx_latency_ms) on `study.latency_device`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autocnn.spec.fields import COSTS
from autocnn.spec.schema import StudySpec

if TYPE_CHECKING:
    from torch import nn


def costs_needed(study: StudySpec) -> list[str]:
    """The costs the study optimises or bounds, in a fixed order."""
    named = set(study.objective_names) | set(study.constraints or {})
    return [name for name in COSTS if name in named]


@dataclass(frozen=True)
class Costs:
    values: dict[str, float]  # latency_ms, params, size_mb: those the study needs
    machine: str | None  # where latency_ms was measured

    def as_attr(self) -> dict[str, Any]:
        return dict(self.values)


def measure_costs(
    model: nn.Module,
    facts: dict[str, float],
    *,
    needed: list[str],
    latency_device: str,
    image_size: int,
    cache: dict[tuple, float],
) -> Costs:
    """The study's costs for this model; `facts` are model_facts' (parameters, weight bytes).

    `cache` keeps each architecture's latency: trials differing only in training settings run
    the same graph, and an ONNX export plus timing costs a second or two.
    """
    from autocnn.models.onnx import machine_name, onnx_latency_ms

    values = {"params": float(facts["params_total"]), "size_mb": float(facts["weights_mb"])}
    machine = None
    if "latency_ms" in needed:
        device = latency_device
        key = ("onnx", type(model).__name__, int(facts["params_total"]), image_size, device)
        if key not in cache:
            cache[key] = onnx_latency_ms(model, image_size=image_size, device=device)
        values["latency_ms"] = cache[key]
        machine = machine_name(device)
    return Costs({name: values[name] for name in needed}, machine)
