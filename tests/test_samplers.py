"""Samplers shared by workers: distinct draws per trial, the same draws for the same study again."""

from __future__ import annotations

from collections.abc import Callable

import optuna
import pytest

from autocnn.search.samplers import TrialSeededRandomSampler, TrialSeededTPESampler, trial_seed

Factory = Callable[[], optuna.samplers.BaseSampler]
FACTORIES: dict[str, Factory] = {
    "tpe": lambda: TrialSeededTPESampler(seed=7, n_startup_trials=4),
    "random": lambda: TrialSeededRandomSampler(seed=7),
}


def draw(study: optuna.Study) -> tuple[int, float, int]:
    trial = study.ask()
    values = (trial.number, trial.suggest_float("lr", 1e-4, 1e-1, log=True), trial.suggest_int("depth", 2, 8))
    study.tell(trial, values[1])
    return values


def two_workers(factory: Factory, rounds: int) -> list[tuple[int, float, int]]:
    """Two samplers built alike (as two worker processes would build them) over one storage."""
    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(study_name="shared", storage=storage, sampler=factory())
    second = optuna.load_study(study_name="shared", storage=storage, sampler=factory())
    return [draw(worker) for _ in range(rounds) for worker in (first, second)]


@pytest.mark.parametrize("name", list(FACTORIES))
def test_workers_with_one_seed_draw_apart_and_a_rerun_draws_the_same(name: str) -> None:
    drawn = two_workers(FACTORIES[name], rounds=4)
    assert [number for number, _, _ in drawn] == list(range(8))
    assert len({lr for _, lr, _ in drawn}) == 8  # no worker repeats another's configuration
    assert two_workers(FACTORIES[name], rounds=4) == drawn
    alone = optuna.create_study(sampler=FACTORIES[name]())
    assert [draw(alone) for _ in range(2)] == drawn[:2]  # one process or two: trial n draws alike


def test_a_plain_seeded_sampler_repeats_across_workers() -> None:
    """Why the samplers above exist: Optuna's own, seeded alike, suggest the same first trials."""
    drawn = two_workers(lambda: optuna.samplers.RandomSampler(seed=7), rounds=1)
    assert drawn[0][1:] == drawn[1][1:]


def test_trial_seeds_are_distinct_and_within_numpys_range() -> None:
    seeds = {trial_seed(seed, number) for seed in range(5) for number in range(10_000)}
    assert len(seeds) == 50_000 and all(0 <= s < 2**32 for s in seeds)
