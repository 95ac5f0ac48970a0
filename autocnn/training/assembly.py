"""A configuration made trainable: model, preprocessing, batches, optimizer groups and trainer.

The study's trials, finalize's re-training, the plan's timing probe and the benchmarks all build
a trial here and nowhere else, so what a trial trained with and what its refit trains with cannot
drift apart. Nothing here knows Optuna or MLflow: callers pass plain values in and log what they
get back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autocnn.models.catalog import CUSTOM_CNN, Preprocess
from autocnn.training.budget import judge_floor_steps
from autocnn.training.config import BALANCED, AugmentConfig, StudySettings, TimmConfig, TrialConfig
from autocnn.training.transfer import probe_applies

if TYPE_CHECKING:
    import torch
    from torch import nn

    from autocnn.data.arrays import Dataset, Split
    from autocnn.training.features import FeatureCache, FeaturePath, Found
    from autocnn.training.loop import Trainer, TrainSettings
    from autocnn.training.transfer import Probe

# Seed s of a re-training offsets the trial's own seeds by s strides; a stride larger than any
# trial number keeps every (trial, seed) pair of a study on seeds of its own.
SEED_STRIDE = 1_000_003
VAL_BATCH_MIN = 256  # evaluation holds no gradients: larger batches cost nothing and run faster


@dataclass(frozen=True)
class Seeds:
    """The two random streams of one training run: weights and dropout, and batch order and augmentation."""

    torch: int
    batches: int


def trial_seeds(study: StudySettings, number: int, retraining: int = 0) -> Seeds:
    """Trial `number`'s seeds; re-training `retraining` > 0 of its config gets seeds of its own."""
    offset = retraining * SEED_STRIDE
    return Seeds(study.seed * 100_003 + number + offset, study.seed + number + offset)


def preprocessing(study: StudySettings, config: TrialConfig) -> Preprocess:
    """The input size and normalisation this configuration's model expects."""
    from autocnn.models.build import preprocess_for

    return preprocess_for(config.model, config.model_params, image_size=study.image_size, native_size=study.native_size)


def train_settings(study: StudySettings, config: TrialConfig, budget: dict[str, Any], *, n_val: int) -> TrainSettings:
    """The trial's training settings: its sampled keys with the budget's epochs, patience and floor."""
    from autocnn.training.loop import TrainSettings

    return TrainSettings.from_trial(
        config.train,
        study.objective,
        epochs=int(budget["epochs"]),
        early_stopping=int(budget["patience"]),
        min_steps=judge_floor_steps(int(budget["steps_per_epoch"]) * int(budget["epochs"])),
        noise_n=n_val,
    )


def parameter_groups(
    model: nn.Module, *, lr: float, backbone_lr_mult: float | None, layer_decay: float = 1.0
) -> list[dict[str, Any]]:
    """AdamW's groups, named so each one's learning rate can be logged.

    A backbone (`backbone_lr_mult` given) trains at `lr * backbone_lr_mult` and its new head at
    `lr`: pretrained features need smaller steps than a head starting from random. With
    `layer_decay` < 1 each of timm's coarse backbone groups (stem -> last stage) gets its own
    rate, the last at `lr * backbone_lr_mult` and each one before it `layer_decay` times that:
    early layers hold the most general features and move least. The custom CNN is one group at
    `lr`. Norm scales and biases (every 0-d or 1-d tensor) get no weight decay, in a twin group
    at the same rate: shrinking them toward zero only fights the normalisation. Frozen parameters
    are left out: the optimizer keeps no state for them.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if backbone_lr_mult is None:
        return _decay_twins("model", trainable, lr)
    head_ids = {id(p) for p in model.head_parameters()}  # type: ignore[operator]
    head = [p for p in trainable if id(p) in head_ids]
    groups: list[dict[str, Any]] = []
    for name, params, rate in _backbone_rates(model, head_ids, lr * backbone_lr_mult, layer_decay):
        groups += _decay_twins(name, params, rate)
    return [*groups, *_decay_twins("head", head, lr)]


def _decay_twins(name: str, params: list[Any], lr: float) -> list[dict[str, Any]]:
    """`name` with weight decay, and `name.no_decay` (norm scales and biases) without; empty ones dropped."""
    from autocnn.training.loop import NO_DECAY

    decayed = [p for p in params if p.ndim > 1]
    plain = [p for p in params if p.ndim <= 1]
    groups = [{"params": decayed, "lr": lr, "name": name}] if decayed else []
    if plain:
        groups.append({"params": plain, "lr": lr, "name": name + NO_DECAY, "weight_decay": 0.0})
    return groups


def _backbone_rates(
    model: nn.Module, head_ids: set[int], rate: float, layer_decay: float
) -> list[tuple[str, list[Any], float]]:
    """(group name, trainable backbone parameters, learning rate), one group without layer decay."""
    if layer_decay >= 1.0:
        params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
        return [("backbone", params, rate)] if params else []
    from autocnn.models.backbones import backbone_groups

    ordered = backbone_groups(model)  # type: ignore[arg-type]
    last = len(ordered) - 1
    out = []
    for i, group in enumerate(ordered):
        params = [p for p in group if p.requires_grad]
        if params:
            out.append((f"backbone.{i}", params, rate * layer_decay ** (last - i)))
    return out


def augmentation_pipeline(augment: AugmentConfig, *, image_size: int, seed: int) -> Any:
    """The trial's albumentations pipeline, or None when it turns no operation on.

    albumentations is imported only when a trial augments.
    """
    if not augment.enabled:
        return None
    from autocnn.training import augment as aug

    return aug.build_train_transform(augment.ops(), image_size=image_size, seed=seed)


def train_batches(
    augment: AugmentConfig,
    split: Split,
    pre: Preprocess,
    *,
    batch_size: int,
    seed: int,
    device: torch.device,
    balanced: bool = False,
) -> tuple[Any, Any]:
    """(batches, augmentation pipeline or None): augmented when `augment` turns any op on."""
    pipeline = augmentation_pipeline(augment, image_size=pre.image_size, seed=seed)
    batches = image_batches(pipeline, split, pre, batch_size=batch_size, seed=seed, device=device, balanced=balanced)
    return batches, pipeline


def image_batches(
    pipeline: Any,
    split: Split,
    pre: Preprocess,
    *,
    batch_size: int,
    seed: int,
    device: torch.device,
    balanced: bool = False,
) -> Any:
    """Shuffled training batches of images, through `pipeline` when there is one; `balanced` draws
    classes evenly (train.sampler)."""
    from autocnn.training.loop import TensorBatches

    if pipeline is None:
        return TensorBatches(
            split, pre, batch_size=batch_size, shuffle=True, seed=seed, device=device, balanced=balanced
        )
    from autocnn.training import augment as aug

    return aug.AugmentedBatches(
        split,
        pre,
        pipeline,
        batch_size=batch_size,
        seed=seed,
        num_workers=aug.N_WORKERS,
        device=device,
        balanced=balanced,
    )


def balanced_sampling(config: TrialConfig) -> bool:
    return config.train.sampler == BALANCED


def trainer_class_weights(config: TrialConfig, split: Split, num_classes: int) -> torch.Tensor | None:
    """train.class_weights over the images this trial trains on (a refit's train + val included)."""
    from autocnn.training.sampling import loss_weights

    return loss_weights(config.train.class_weights, split.labels, num_classes)


@dataclass
class AssembledTrial:
    """Everything one run of a configuration trains with; `trainer.fit(train, val)` runs it.

    `model` is always the whole model, what is logged and exported. On the cached-feature path
    the trainer's own model is only its head (the same modules), and the batches are features.
    """

    config: TrialConfig
    pre: Preprocess
    settings: TrainSettings
    model: nn.Module
    train: Any  # TensorBatches, AugmentedBatches or FeatureBatches
    val: Any  # TensorBatches or FeatureBatches, never augmented
    augmentation: Any  # the albumentations pipeline, None without augmentation
    trainer: Trainer
    path: FeaturePath | None = None  # which path the trial took and why; None: no cache was offered
    probe: Probe | None = None  # the linear probe the head started from (probe_first), if any

    def tags(self) -> dict[str, str]:
        """What MLflow records about how this trial started: its feature path and its head."""
        tags = self.path.tags() if self.path is not None else {}
        if self.probe is not None:
            tags["autocnn.head_start"] = self.probe.describe()
        return tags


def assemble_trial(
    study: StudySettings,
    config: TrialConfig,
    data: Dataset,
    settings: TrainSettings,
    *,
    seeds: Seeds,
    pre: Preprocess | None = None,
    train_split: Split | None = None,
    batch_size: int | None = None,
    device: torch.device | None = None,
    load_weights: bool = True,
    features: FeatureCache | None = None,
) -> AssembledTrial:
    """One configuration, ready to train on `data` (at the configuration's input size).

    `train_split` replaces the training images (a refit trains on train + val); `batch_size`
    replaces the configured one where a split is smaller than a batch (the plan's probe). With
    `features`, a frozen backbone's trial trains its head on cached features (autocnn.training.features
    says when); without, every trial takes the full path.
    """
    import torch

    from autocnn.models.build import build_model
    from autocnn.training.features import FeatureCache as FeatureCacheType
    from autocnn.training.features import choose_path
    from autocnn.training.loop import TensorBatches, Trainer, pick_device

    pre = pre or preprocessing(study, config)
    device = device or pick_device()
    torch.manual_seed(seeds.torch)
    model = build_model(
        config.model,
        config.model_params,
        num_classes=data.num_classes,
        image_size=pre.image_size,
        load_weights=load_weights,
    )
    batch = batch_size or config.train.batch_size
    split = train_split or data.train
    pipeline = augmentation_pipeline(config.augment, image_size=pre.image_size, seed=seeds.batches)
    offered = features is not None and load_weights  # features of weights about to be replaced are no use
    path = choose_path(config, augmenting=pipeline is not None, feature_cache=study.feature_cache) if offered else None
    probe = None
    if (
        features is not None
        and config.model != CUSTOM_CNN
        and probe_applies(config.model_params, load_weights=load_weights)
    ):
        # With study.feature_cache off the probe's features are computed for this trial alone, never kept.
        probe_features = features if study.feature_cache else FeatureCacheType(None)
        probe = start_from_probe(
            study,
            config,
            probe_features,
            model,
            split,
            data.num_classes,
            pre=pre,
            seeds=seeds,
            device=device,
            settings=settings,
        )
    if path is not None and path.cached and features is not None:
        return assemble_on_features(
            study,
            config,
            data,
            settings,
            features,
            path,
            seeds=seeds,
            pre=pre,
            model=model,
            split=split,
            pipeline=pipeline,
            batch=batch,
            device=device,
            probe=probe,
        )
    train = image_batches(
        pipeline, split, pre, batch_size=batch, seed=seeds.batches, device=device, balanced=balanced_sampling(config)
    )
    val = TensorBatches(data.val, pre, batch_size=max(VAL_BATCH_MIN, batch), shuffle=False, device=device)
    timm = config.model_config if isinstance(config.model_config, TimmConfig) else None
    groups = parameter_groups(
        model,
        lr=settings.lr,
        backbone_lr_mult=timm.backbone_lr_mult if timm else None,
        layer_decay=timm.layer_decay if timm else 1.0,
    )
    trainer = Trainer(
        model,
        settings,
        steps_per_epoch=len(train),
        device=device,
        param_groups=groups,
        class_weights=trainer_class_weights(config, split, data.num_classes),
    )
    return AssembledTrial(config, pre, settings, trainer.model, train, val, pipeline, trainer, path, probe)


def start_from_probe(
    study: StudySettings,
    config: TrialConfig,
    features: FeatureCache,
    model: nn.Module,
    split: Split,
    num_classes: int,
    *,
    pre: Preprocess,
    seeds: Seeds,
    device: torch.device,
    settings: TrainSettings,
) -> Probe | None:
    """Fit the new head as a linear probe on the frozen backbone's features of `split`, in place,
    before its training starts (autocnn.training.transfer says why). The features are the ones a frozen
    trial of the same backbone uses (same key: cached once per study); None for a head with a
    hidden layer, which a linear probe cannot stand for."""
    import torch

    from autocnn.training.loop import autocast_dtype
    from autocnn.training.transfer import as_numpy, fit_probe, linear_head, load_probe, probe_key

    head = linear_head(model)
    if head is None:
        return None
    model.to(device, memory_format=torch.channels_last)
    on = Backbone(model, pre, seeds, device, autocast_dtype(device, settings.precision))
    found, _ = split_features(study, config, features, on, split)
    key = probe_key(_features_key(study, config, on, split).digest(), num_classes)
    probe = features.fitted(key, lambda: fit_probe(as_numpy(found), split.labels, num_classes))
    load_probe(head, probe)
    return probe


def assemble_on_features(
    study: StudySettings,
    config: TrialConfig,
    data: Dataset,
    settings: TrainSettings,
    features: FeatureCache,
    path: FeaturePath,
    *,
    seeds: Seeds,
    pre: Preprocess,
    model: nn.Module,
    split: Split,
    pipeline: Any,
    batch: int,
    device: torch.device,
    probe: Probe | None = None,
) -> AssembledTrial:
    """The head alone, trained on the frozen backbone's cached features of `split` and val.

    The batches follow the full path's order and size; only the head's parameters train, at
    `train.lr`, as on the full path where the frozen backbone has no optimizer group.
    """
    from dataclasses import replace

    import torch

    from autocnn.models.backbones import FeatureHead
    from autocnn.training.features import FeatureBatches, describe_sources
    from autocnn.training.loop import Trainer, autocast_dtype

    model = model.to(device, memory_format=torch.channels_last)
    on = Backbone(model, pre, seeds, device, autocast_dtype(device, settings.precision))
    train_features, train_source = training_features(study, config, features, path, on, split, pipeline)
    val_features, val_source = split_features(study, config, features, on, data.val)
    train = FeatureBatches(
        train_features,
        split.labels,
        batch_size=batch,
        shuffle=True,
        seed=seeds.batches,
        device=device,
        balanced=balanced_sampling(config),
        targets=split.targets,
    )
    val = FeatureBatches(
        val_features, data.val.labels, batch_size=max(VAL_BATCH_MIN, batch), shuffle=False, device=device
    )
    head = FeatureHead(model)
    groups = _decay_twins("head", [p for p in head.parameters() if p.requires_grad], settings.lr)
    trainer = Trainer(
        head,
        settings,
        steps_per_epoch=len(train),
        device=device,
        param_groups=groups,
        channels_last=False,
        class_weights=trainer_class_weights(config, split, data.num_classes),
    )
    path = replace(path, source=describe_sources(train_source, val_source))
    return AssembledTrial(config, pre, settings, model, train, val, pipeline, trainer, path, probe)


@dataclass(frozen=True)
class Backbone:
    """The frozen model features are computed with, and what their key needs besides the split."""

    model: nn.Module
    pre: Preprocess
    seeds: Seeds
    device: torch.device
    autocast: torch.dtype | None  # the trial's precision: the full path's backbone runs in it


def weights_of(study: StudySettings, config: TrialConfig, on: Backbone) -> str:
    from autocnn.training.features import weights_identity

    pretrained = config.model_params.get("pretrained", True)
    return weights_identity(config.model, pretrained, torch_seed=on.seeds.torch)


def _features_key(study: StudySettings, config: TrialConfig, on: Backbone, split: Split) -> Any:
    from autocnn.training.features import feature_key

    return feature_key(config, on.pre, split, weights=weights_of(study, config, on), autocast=on.autocast)


def split_features(
    study: StudySettings, config: TrialConfig, features: FeatureCache, on: Backbone, split: Split
) -> tuple[torch.Tensor, Found]:
    """(N, D) features of a split's images as they are, from the cache or computed into it."""
    from autocnn.training.features import pooled_features

    key = _features_key(study, config, on, split)
    return features.get(key, lambda: pooled_features(on.model, split, on.pre, device=on.device, autocast=on.autocast))


def training_features(
    study: StudySettings,
    config: TrialConfig,
    features: FeatureCache,
    path: FeaturePath,
    on: Backbone,
    split: Split,
    pipeline: Any,
) -> tuple[torch.Tensor, Found]:
    """The training split's features, or with cached views (V, N, D) features of V augmented copies.

    The views' seeds come from the study's seed, not the trial's: every trial with the same
    augmentation parameters trains on the same views, computed once.
    """
    from autocnn.training.features import augmented_views, feature_key, views_identity

    if not path.views:
        return split_features(study, config, features, on, split)
    views = views_identity(pipeline, views=path.views, seed=study.seed)
    key = feature_key(config, on.pre, split, weights=weights_of(study, config, on), views=views, autocast=on.autocast)

    def compute() -> torch.Tensor:
        return augmented_views(
            on.model, split, on.pre, pipeline, views=path.views, seed=study.seed, device=on.device, autocast=on.autocast
        )

    return features.get(key, compute)
