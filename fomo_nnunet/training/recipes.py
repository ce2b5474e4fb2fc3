"""Recipes as data: frozen dataclasses, validated once when they are made, recorded in every checkpoint.

A trainer's recipe is one value (`recipe = TINY_REG`); a variant is one line
(`recipe = replace(TINY_REG, num_epochs=72)`). Settings nnU-Net's trainer has carry nnU-Net's names
(`num_epochs`, `num_iterations_per_epoch`, `num_val_iterations_per_epoch`, `initial_lr`, `weight_decay`,
`save_every`, `oversample_foreground_percent`); the trainer base (fomo_nnunet.training.runs.FomoTrainer) copies
them onto the trainer after nnU-Net's `__init__`, and writes `recipe_record(recipe)` into every checkpoint
(`fomo_recipe`) and into `recipe.json` in the fold folder.

- `Budget`: how long and how fast (nnU-Net's defaults).
- `FinetuneRecipe`: the few-shot schedule of a pretrained network (fomo_nnunet.finetune): fresh-only epochs,
  warmup, the optimiser, the decoder's loading, test-time mirroring.
- `SegRecipe`, `ImageLevelRecipe` (with its `HeadSpec`): what the segmentation and image-level trainers add.

Whether a run starts from pretrained weights is not part of a recipe: the plans decide
(`fomo-nnunet plan transfer --from-scratch` writes plans without a checkpoint).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, is_dataclass

from fomo_nnunet.class_weights import SQRT_INVERSE_FREQUENCY, WEIGHTINGS
from fomo_nnunet.models.heads import POOLINGS

OPTIMIZERS = ("sgd", "adamw")
AUGMENTS = (True, False, "intensity")
RECIPE_KEY = "fomo_recipe"      # in every checkpoint
RECIPE_FILE = "recipe.json"     # in the fold folder


def _whole(obj, name: str, low: int) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{type(obj).__name__}.{name} must be a whole number >= {low}, got {value!r}")


def _number(obj, name: str, low: float, high: float = math.inf, low_open: bool = False,
            high_open: bool = False) -> None:
    value = getattr(obj, name)
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and not math.isnan(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{type(obj).__name__}.{name} must be a number in {interval}, got {value!r}")


def _flag(obj, name: str) -> None:
    if not isinstance(getattr(obj, name), bool):
        raise ValueError(f"{type(obj).__name__}.{name} must be True or False, got {getattr(obj, name)!r}")


def _one_of(obj, name: str, allowed: tuple) -> None:
    value = getattr(obj, name)
    if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
        raise ValueError(f"{type(obj).__name__}.{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


@dataclass(frozen=True)
class Budget:
    """How long and how fast a trainer learns, in nnU-Net's attribute names (defaults: nnU-Net's)."""

    num_epochs: int = 1000
    num_iterations_per_epoch: int = 250
    num_val_iterations_per_epoch: int = 50
    initial_lr: float = 1e-2
    weight_decay: float = 3e-5
    save_every: int = 50            # checkpoint_latest every this many epochs
    progress_plot_every: int = 1    # progress.png every this many epochs and after the last

    NNUNET_NAMES = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "initial_lr",
                    "weight_decay", "save_every")

    def __post_init__(self):
        for name in ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "save_every",
                     "progress_plot_every"):
            _whole(self, name, 1)
        _number(self, "initial_lr", 0, low_open=True, high_open=True)
        _number(self, "weight_decay", 0, high_open=True)

    def apply(self, trainer) -> None:
        """Set nnU-Net's attributes of `trainer` (after nnU-Net's `__init__`, which sets its defaults)."""
        for name in self.NNUNET_NAMES:
            setattr(trainer, name, getattr(self, name))
        trainer.progress_plot_every = self.progress_plot_every


@dataclass(frozen=True)
class FinetuneRecipe(Budget):
    """The few-shot recipe of a pretrained network (fomo_nnunet.finetune): first only the fresh parts learn
    (pretrained parameters at lr 0), then the whole network warms up linearly, then nnU-Net's polynomial
    decay. From-scratch plans have no pretrained group, so the schedule reduces to warmup + poly."""

    num_epochs: int = 250
    optimizer_name: str = "sgd"         # "sgd" (nnU-Net's) or "adamw"; `weight_decay` applies to either
    fresh_only_epochs: int = 10         # pretrained tensors frozen (lr 0) while fresh ones start
    warmup_epochs: int = 10             # then the whole network warms up linearly
    pretrained_lr_scale: float = 1.0    # lr of pretrained tensors relative to fresh ones
    load_decoder: bool = True           # load the pretrained decoder where shapes match (the encoder always)
    test_time_mirroring: bool = True    # mirroring TTA in validation and nnUNetv2_predict (8x the forwards)

    def __post_init__(self):
        super().__post_init__()
        _one_of(self, "optimizer_name", OPTIMIZERS)
        _whole(self, "fresh_only_epochs", 0)
        _whole(self, "warmup_epochs", 0)
        _number(self, "pretrained_lr_scale", 0, high_open=True)
        _flag(self, "load_decoder")
        _flag(self, "test_time_mirroring")


@dataclass(frozen=True)
class SegRecipe(FinetuneRecipe):
    """Few-shot segmentation (trainers/nnUNetTrainerFomoSeg.py)."""

    # nnU-Net validates fold 'all' on its own training cases: a sliding window over every training case that
    # says nothing about generalisation, and costs a tiny run's time on a CPU. False skips it.
    validate_fold_all: bool = True
    oversample_foreground_percent: float = 0.33  # share of each batch forced to hold foreground (nnU-Net's)
    # cross-entropy class weights: None is nnU-Net's unweighted loss; "sqrt_inverse_frequency" weighs class c by
    # sqrt(background voxels / class-c voxels) over (at most `class_weight_cases` of) the fold's training cases,
    # capped at `class_weight_cap` (fomo_nnunet.class_weights)
    ce_class_weighting: str | None = None
    class_weight_cap: float = 100.0
    class_weight_cases: int = 200

    def __post_init__(self):
        super().__post_init__()
        _flag(self, "validate_fold_all")
        _number(self, "oversample_foreground_percent", 0, 1)
        _one_of(self, "ce_class_weighting", (None, *WEIGHTINGS))
        _number(self, "class_weight_cap", 1)
        _whole(self, "class_weight_cases", 1)


@dataclass(frozen=True)
class HeadSpec:
    """The pooling head of the image-level trainers (fomo_nnunet.models.heads.PoolingHead)."""

    stages: tuple[int, ...] = (-1,)  # encoder stages pooled and concatenated; -1 is the deepest
    hidden: int = 256
    dropout: float = 0.2
    pooling: str = "avg"             # "avg", or "avgmax" (average and maximum: focal findings survive)

    def __post_init__(self):
        stages = tuple(self.stages) if isinstance(self.stages, (list, tuple)) else self.stages
        if not isinstance(stages, tuple) or not stages or \
                any(isinstance(s, bool) or not isinstance(s, int) for s in stages) or len(set(stages)) != len(stages):
            raise ValueError(f"HeadSpec.stages must be distinct encoder stage numbers (-1: the deepest), "
                             f"got {self.stages!r}")
        object.__setattr__(self, "stages", stages)
        _whole(self, "hidden", 1)
        _number(self, "dropout", 0, 1, high_open=True)
        _one_of(self, "pooling", POOLINGS)


@dataclass(frozen=True)
class ImageLevelRecipe(FinetuneRecipe):
    """Classification and regression from the pretrained encoder (trainers/nnUNetTrainerFomoImageLevel.py): the
    few-shot schedule for tens of cases, the head, and what a training crop sees."""

    num_epochs: int = 100
    num_iterations_per_epoch: int = 50
    num_val_iterations_per_epoch: int = 10
    fresh_only_epochs: int = 5
    warmup_epochs: int = 5
    save_every: int = 20
    head: HeadSpec = field(default_factory=HeadSpec)
    crop_jitter_fraction: float = 0.1      # random shift of the centred crop, as a fraction of the patch
    # True: nnU-Net's augmentation of the training crops; "intensity": its intensity transforms only (no
    # rotation, scaling, mirroring); False: none
    augment: bool | str = True
    balance_classes: bool = True           # classification: draw every class equally often
    huber_delta: float = 1.0               # regression: Huber loss on standardised targets
    # before the first step, standardise the head's pooled features by their mean and sd over training cases'
    # centred crops (saved with the weights), over at most `standardise_cases` cases
    standardise_head_inputs: bool = False
    standardise_cases: int = 64
    grad_clip: float = 12.0                # max gradient norm (nnU-Net's)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.head, HeadSpec):
            raise ValueError(f"ImageLevelRecipe.head must be a HeadSpec, got {self.head!r}")
        _number(self, "crop_jitter_fraction", 0, 1, high_open=True)
        _one_of(self, "augment", AUGMENTS)
        _flag(self, "balance_classes")
        _number(self, "huber_delta", 0, low_open=True, high_open=True)
        _flag(self, "standardise_head_inputs")
        _whole(self, "standardise_cases", 1)
        _number(self, "grad_clip", 0, low_open=True)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf": no limit
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def recipe_record(recipe) -> dict:
    """A recipe as plain JSON values (`asdict`), with the name of its class."""
    if not is_dataclass(recipe):
        raise TypeError(f"a recipe is a dataclass, got {type(recipe).__name__}")
    return {"recipe_class": type(recipe).__name__, **_jsonable(asdict(recipe))}


# ---- the named recipes of the trainers ------------------------------------------------------------------
# The CPU demo's finetuning budget for tiny-preset plans (0.3M parameters, 32^3 patches at 4 mm). With nnU-Net's
# SGD (lr 1e-2, momentum 0.99), two epochs of fresh-only training and two of warmup, no demo model left its
# starting point (docs/results/demo-recipe.md). AdamW at 3e-3 with one epoch each of fresh-only training and
# warmup learns within the budget; both arms use it (from-scratch plans just have no fresh-only epoch).
TINY_FINETUNING = dict(num_epochs=6, num_iterations_per_epoch=15, num_val_iterations_per_epoch=3,
                       fresh_only_epochs=1, warmup_epochs=1, save_every=5, progress_plot_every=5,
                       optimizer_name="adamw", initial_lr=3e-3, weight_decay=1e-4)
# a few iterations, for tests (on top of a tiny recipe)
SMOKE_FINETUNING = dict(num_epochs=2, num_iterations_per_epoch=3, num_val_iterations_per_epoch=1,
                        fresh_only_epochs=1, warmup_epochs=0)

SEG = SegRecipe()
# The demo's segmentation recipe for tiny-preset plans: 180 steps. Every batch holds foreground (a few-shot
# task's structures are small: with nnU-Net's 33 % the meningioma could stay background). No mirroring at
# inference: on a CPU it multiplies the forwards by eight. For structures of a few dozen voxels (the trigeminal
# nerve and vessels at 4 mm), chosen by 5-fold cross-validation fold 0 on the training split
# (docs/results/segmentation-recipe.md): at lr 3e-3 with nnU-Net's unweighted loss both arms predicted
# background only; lr 1e-2 with cross-entropy weighted by the square root of the inverse label frequency found
# both classes in the scratch arm, and the pretrained arm only with the MAE decoder left out (the decoder was
# pretrained to reconstruct intensities; the encoder is what transfers).
TINY_SEG = SegRecipe(**(TINY_FINETUNING | dict(
    num_epochs=12, initial_lr=1e-2, ce_class_weighting=SQRT_INVERSE_FREQUENCY, load_decoder=False,
    oversample_foreground_percent=1.0, test_time_mirroring=False, validate_fold_all=False)))

IMAGE_LEVEL = ImageLevelRecipe()
# The demo's image-level recipe: a head that pools the three deepest stages by average and maximum, on the
# centred crop without augmentation (docs/results/demo-recipe.md): with the deepest stage's average alone,
# neither arm's classifier nor regressor left its starting point (a focal lesion is averaged away over the
# brain); nnU-Net's augmentation and a random shift of the crop kept the regressor from fitting even its
# training cases. 90 steps.
TINY_CLS = ImageLevelRecipe(**(TINY_FINETUNING | dict(
    head=HeadSpec(stages=(-3, -2, -1), hidden=64, pooling="avgmax"), augment=False, crop_jitter_fraction=0.0)))
# Brain age on the tiny plans: 360 steps with nnU-Net's intensity augmentation, the head's pooled features
# standardised over training cases before the first step. Chosen on training data only (FOMO-Synth brain age,
# nnU-Net's fold 0 of the training cases) by the mean held-out MAE of both arms; the pooled features of the
# encoder vary little between brains, so without standardisation the head's outputs stayed compressed toward
# the mean (docs/results/brain-age.md).
TINY_REG = ImageLevelRecipe(**(TINY_FINETUNING | dict(
    head=HeadSpec(stages=(-3, -2, -1), hidden=64, pooling="avgmax"), augment="intensity", crop_jitter_fraction=0.0,
    num_epochs=24, standardise_head_inputs=True)))
