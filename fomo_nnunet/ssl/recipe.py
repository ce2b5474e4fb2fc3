"""The masked-autoencoder pretraining recipe as data (trainers/nnUNetTrainerFomoMAE.py), and what the trainer
records of it.

- `MAEObjective`: the masking, the reconstruction loss and the objectives that shape the deep stages
  (decoder skips, VICReg on the pooled bottleneck);
- `PretrainRecipe`: a `Budget` (nnU-Net's names) with AdamW, warmup + cosine, clipping, the augmentation, the
  objective and what checkpoints carry;
- the named recipes of the trainers (MAE, TINY_MAE, SMOKE_MAE, AMAES ...): a trainer variant is
  `recipe = replace(TINY_MAE, objective=replace(TINY_MAE.objective, decoder_skips="none"))`;
- `objective_settings`: the settings every pretraining checkpoint's fomo_metadata carries.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from fomo_nnunet.models.embedding_pooling import DEFAULT_POOLING, check_pooling
from fomo_nnunet.ssl.augment import PretrainAugmentation
from fomo_nnunet.ssl.losses import FEATURE_VARIANCE, LOSS_REGIONS, RECONSTRUCTION_KINDS, VICREG_TERM_NAMES, vicreg_history
from fomo_nnunet.ssl.skips import check_skip_settings
from fomo_nnunet.training.recipes import Budget, _flag, _number, _one_of, _whole


VICREG_PAIRS = ("views", "sessions")
ALL_STAGES = "all"  # vicreg_stages: every encoder stage (the vector embedding_pooling "stages" writes)
VIEW_DESCRIPTIONS = {  # checkpoint metadata: what the VICReg term compared
    "views": "two independently masked views per batch",
    "sessions": "each case and a partner from its session: another sequence with probability {p}, else the case "
                "itself; each cropped, augmented and masked on its own"}
VICREG_LOG_KEYS = ("vicreg_losses", "vicreg_invariance", "vicreg_variance", "vicreg_covariance",
                   "vicreg_feature_variance")
VICREG_LOGGED_TERMS = dict(zip(VICREG_LOG_KEYS, VICREG_TERM_NAMES + (FEATURE_VARIANCE,)))  # log key -> history name


def check_vicreg_stages(stages) -> tuple[int, ...] | str:
    """`stages` as MAEObjective keeps it: "all", or a non-empty tuple of distinct whole numbers (encoder output
    indices, negative from the deepest); else a ValueError. Whether they exist is checked against the
    network (fomo_nnunet.ssl.skips.resolve_stages)."""
    if stages == ALL_STAGES:
        return ALL_STAGES
    try:
        t = tuple(stages)
    except TypeError:
        t = None
    if (not t or isinstance(stages, str) or any(isinstance(i, bool) or not isinstance(i, int) for i in t)
            or len(set(t)) != len(t)):
        raise ValueError(f"vicreg_stages must be {ALL_STAGES!r} or a non-empty tuple of distinct encoder stage "
                         f"indices (0: the shallowest, -1: the bottleneck), got {stages!r}")
    return t


@dataclass(frozen=True)
class MAEObjective:
    """What the network learns: reconstruct block-masked patches (nnssl's default: 75 % of 16^3 blocks at 1 mm),
    optionally with the decoder's skips off or dropped and a VICReg term on pooled encoder stages.

    total loss = mae_weight * reconstruction + vicreg_weight * VICReg(pooled features of the two views);
    `mae_weight = 0` trains the joint-embedding objective alone (the decoder still runs, without a gradient
    of its own; the validation loss stays the reconstruction loss, for the record).

    `vicreg_stages`: which encoder stages' global average pools form the VICReg features, as indices into the
    encoder's outputs (0 the shallowest, -1 the bottleneck, the default), or "all". The pools are CONCATENATED
    (shallow to deep) into one vector and one VICReg loss is taken on it, rather than one VICReg loss per stage
    summed. Why: VICReg (Bardes, Ponce & LeCun, ICLR 2022; github.com/facebookresearch/vicreg) regularises
    one vector per view, and its covariance term is meant to decorrelate every pair of its dimensions; on the
    concatenation it also decorrelates dimensions of different stages (a sum of per-stage losses would let
    the stages copy each other), and the vector it shapes is exactly the embedding that `embedding_pooling =
    "stages"` writes (every stage's pool, concatenated shallow to deep). The variance hinge stays one number
    in [0, 2] (the mean over all dimensions, both branches summed). VICRegL (Bardes, Ponce & LeCun, NeurIPS
    2022) sums separate losses only because its terms act on different kinds of features (global vectors
    and local feature maps); here every stage gives one global vector.

    `vicreg_expander`: widths of an expander between the pooled features and the VICReg loss, as the VICReg
    paper trains it (its "expander", three linear layers of 8192 with batch normalisation and ReLU between them;
    `Projector` in github.com/facebookresearch/vicreg, main_vicreg.py): Linear-BatchNorm-ReLU for every width but
    the last, then a Linear without bias. () (the default): none, VICReg on the pooled features themselves.
    The expander is pretraining-only: it sits on the network as the `fomo_vicreg_expander` module (saved and
    resumed with it), and downstream loading (encoder and decoder by name) and embeddings never use it. Its
    batch normalisation sees both views of the batch together.
    """

    mask_ratio: float = 0.75
    block_size: int = 16
    learned_mask_token: bool = False
    loss_kind: str = "mse"
    loss_region: str = "masked_brain"   # which voxels the loss counts: fomo_nnunet.ssl.losses.LOSS_REGIONS
    decoder_skips: str = "all"          # "all"; "none": the decoder sees the bottleneck only; "drop": at random
    skip_drop_p: float = 0.5            # "drop": probability that one skip of one sample is zeroed
    vicreg_weight: float = 0.0          # > 0: two masked views per step + weight * VICReg(pooled bottlenecks)
    vicreg_coefficients: tuple[float, float, float] = (25.0, 25.0, 1.0)  # invariance, variance, covariance
    vicreg_pairs: str = "views"         # "views": two masks of each patch; "sessions": a case and a session partner
    session_p_other: float = 0.5        # "sessions": how often the partner is another sequence (else the case)
    vicreg_stages: tuple[int, ...] | str = (-1,)  # encoder stages pooled for VICReg (-1: bottleneck; "all")
    mae_weight: float = 1.0             # weight of the reconstruction term; 0: the VICReg term alone
    vicreg_expander: tuple[int, ...] = ()  # VICReg's expander widths (the paper: 8192-8192-8192); (): none

    def __post_init__(self):
        _number(self, "mask_ratio", 0, 1, low_open=True, high_open=True)
        _whole(self, "block_size", 1)
        _flag(self, "learned_mask_token")
        _one_of(self, "loss_kind", tuple(RECONSTRUCTION_KINDS))
        if self.loss_region not in LOSS_REGIONS:
            raise ValueError(f"loss_region must be one of {', '.join(LOSS_REGIONS)}, got {self.loss_region!r}")
        check_skip_settings(self.decoder_skips, self.skip_drop_p)
        w = self.vicreg_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"vicreg_weight must be a finite number >= 0 (0: no VICReg term), got {w!r}")
        if self.vicreg_pairs not in VICREG_PAIRS:
            raise ValueError(f"vicreg_pairs must be one of {', '.join(VICREG_PAIRS)}, got {self.vicreg_pairs!r}")
        if self.vicreg_pairs == "sessions" and not w > 0:
            raise ValueError("vicreg_pairs = 'sessions' pairs cases for the VICReg term; set vicreg_weight > 0")
        p = self.session_p_other
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"session_p_other must be a probability in [0, 1], got {p!r}")
        c = tuple(self.vicreg_coefficients)
        if len(c) != 3 or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0
                              for x in c):
            raise ValueError(f"vicreg_coefficients must be three finite numbers >= 0 (invariance, variance, "
                             f"covariance), got {self.vicreg_coefficients!r}")
        object.__setattr__(self, "vicreg_coefficients", c)
        object.__setattr__(self, "vicreg_stages", check_vicreg_stages(self.vicreg_stages))
        if self.vicreg_stages != (-1,) and not w > 0:
            raise ValueError(f"vicreg_stages = {self.vicreg_stages!r} chooses the VICReg term's features; set "
                             f"vicreg_weight > 0")
        e = self.vicreg_expander
        if not isinstance(e, (tuple, list)) or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in e):
            raise ValueError(f"vicreg_expander must be a tuple of layer widths >= 1 (): no expander), got {e!r}")
        object.__setattr__(self, "vicreg_expander", tuple(e))
        if e and not w > 0:
            raise ValueError(f"vicreg_expander = {tuple(e)!r} feeds the VICReg term; set vicreg_weight > 0")
        m = self.mae_weight
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m < 0:
            raise ValueError(f"mae_weight must be a finite number >= 0 (0: the VICReg term alone), got {m!r}")
        if m == 0 and not w > 0:
            raise ValueError("mae_weight = 0 and vicreg_weight = 0 leave no loss: set mae_weight > 0 (reconstruction) "
                             "or vicreg_weight > 0 (VICReg alone)")
        if m != 1 and not w > 0:
            raise ValueError(f"mae_weight = {m!r} weighs the reconstruction against the VICReg term, and there is none "
                             f"(vicreg_weight = 0): leave mae_weight at 1")

    @property
    def name(self) -> str:
        """The objective's name in checkpoints."""
        if self.mae_weight == 0:
            return "vicreg"
        return "mae+vicreg" if self.vicreg_weight > 0 else "mae"

    @property
    def gates_skips(self) -> bool:
        """Whether the decoder needs the skip gate (skips off or dropped, or the bottleneck captured for VICReg)."""
        return self.decoder_skips != "all" or self.vicreg_weight > 0


@dataclass(frozen=True)
class PretrainRecipe(Budget):
    """MAE pretraining: AdamW, linear warmup over `warmup_fraction` of the epochs then cosine to zero, gradient
    clipping at `grad_clip` (inf: none), the augmentation and the objective."""

    num_epochs: int = 1000
    num_iterations_per_epoch: int = 250
    num_val_iterations_per_epoch: int = 50
    initial_lr: float = 1e-3
    weight_decay: float = 0.05
    save_every: int = 50
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    adamw_betas: tuple[float, float] = (0.9, 0.95)
    augmentation: PretrainAugmentation = field(default_factory=PretrainAugmentation)
    objective: MAEObjective = field(default_factory=MAEObjective)
    picture_every: int = 10
    # probe-ready embeddings: checkpoint_final carries embedding statistics over this many pretraining cases
    embedding_stats_cases: int = 512
    # the embedding's pooling, recorded in every checkpoint: "deepest" stage or every encoder "stages". Our
    # recipes pool every stage: the rule stated in docs/pretraining-recipes.md ("How the default embedding pooling
    # is chosen") picked it on the probes' cross-validated scores over the train split (tasks 6 and 7, 3 seeds;
    # the figures: docs/results/objectives.md). A checkpoint that records none is "deepest" (DEFAULT_POOLING).
    embedding_pooling: str = "stages"

    def __post_init__(self):
        super().__post_init__()
        _number(self, "warmup_fraction", 0, 1)
        _number(self, "grad_clip", 0, low_open=True)
        betas = tuple(self.adamw_betas)
        if len(betas) != 2 or any(isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1
                                  for b in betas):
            raise ValueError(f"PretrainRecipe.adamw_betas must be two numbers in [0, 1), got {self.adamw_betas!r}")
        object.__setattr__(self, "adamw_betas", betas)
        if not isinstance(self.augmentation, PretrainAugmentation):
            raise ValueError(f"PretrainRecipe.augmentation must be a PretrainAugmentation, got {self.augmentation!r}")
        if not isinstance(self.objective, MAEObjective):
            raise ValueError(f"PretrainRecipe.objective must be an MAEObjective, got {self.objective!r}")
        _whole(self, "picture_every", 1)
        _whole(self, "embedding_stats_cases", 0)
        check_pooling(self.embedding_pooling, "embedding_pooling")

    def warmup_epochs(self, num_epochs: int) -> int:
        """The warmup's epochs in a run of `num_epochs` (at least one when there is a warmup)."""
        return max(1, round(self.warmup_fraction * num_epochs)) if self.warmup_fraction > 0 else 0


def with_objective(recipe: PretrainRecipe, **changes) -> PretrainRecipe:
    """`recipe` with some of its objective's settings changed (a one-line variant)."""
    return replace(recipe, objective=replace(recipe.objective, **changes))


def vicreg_features(stages: tuple[int, ...] | str, expander: tuple[int, ...] = ()) -> str:
    """What the VICReg term compares, in words (checkpoint metadata)."""
    then = (f"then an expander {'-'.join(map(str, expander))} (Linear-BatchNorm-ReLU, last Linear)" if expander
            else "no projector")
    if stages == (-1,):
        return f"global average pool of the bottleneck, {then}"
    which = "every encoder stage" if stages == ALL_STAGES else f"encoder stages {list(stages)}"
    return f"global average pools of {which}, concatenated shallow to deep, {then}"


def objective_settings(recipe: PretrainRecipe, autocast_dtype: str, logged: dict) -> dict:
    """How the objective was trained, as JSON values (every pretraining checkpoint's fomo_metadata);
    `logged`: the trainer's logged series (the VICReg terms per epoch, when there is a VICReg term)."""
    o = recipe.objective
    settings = {"mask_ratio": o.mask_ratio, "block_size": o.block_size, "learned_mask_token": o.learned_mask_token,
                "loss": o.loss_kind, "loss_region": LOSS_REGIONS[o.loss_region], "optimizer": "AdamW",
                "lr": recipe.initial_lr, "adamw_betas": [float(b) for b in recipe.adamw_betas],
                "weight_decay": recipe.weight_decay, "warmup_fraction": recipe.warmup_fraction,
                "schedule": "warmup+cosine",
                "grad_clip": float(recipe.grad_clip) if math.isfinite(recipe.grad_clip) else None,  # None: none
                "autocast_dtype": autocast_dtype,
                "decoder_skips": o.decoder_skips, "skip_drop_p": float(o.skip_drop_p),
                "vicreg_weight": float(o.vicreg_weight), "mae_weight": float(o.mae_weight)}
    if o.vicreg_weight > 0:
        invariance, variance, covariance = (float(c) for c in o.vicreg_coefficients)
        vicreg = {"invariance": invariance, "variance": variance, "covariance": covariance,
                  "features": vicreg_features(o.vicreg_stages, o.vicreg_expander),
                  "expander": list(o.vicreg_expander),
                  "stages": o.vicreg_stages if o.vicreg_stages == ALL_STAGES else list(o.vicreg_stages),
                  "pairs": o.vicreg_pairs,
                  "views": VIEW_DESCRIPTIONS[o.vicreg_pairs].format(p=float(o.session_p_other))}
        if o.vicreg_pairs == "sessions":
            vicreg["session_p_other"] = float(o.session_p_other)
        # the terms per epoch (the variance hinge near its maximum: collapsed features)
        vicreg["history"] = vicreg_history({name: logged[key] for key, name in VICREG_LOGGED_TERMS.items()
                                            if key in logged})
        settings["vicreg"] = vicreg
    return settings


# ---- the named recipes of the trainers -------------------------------------------------------------------
MAE = PretrainRecipe()
# The CPU demo's pretraining for tiny-preset plans (4 mm data, 32^3 patches): 500 steps, blocks of 16 mm.
TINY_MAE = replace(MAE, num_epochs=20, num_iterations_per_epoch=25, num_val_iterations_per_epoch=5, initial_lr=3e-3,
                   save_every=5, picture_every=5, progress_plot_every=5, objective=replace(MAE.objective, block_size=4))
# Four times the tiny pretraining (2000 steps).
LONG_TINY_BUDGET = dict(num_epochs=80, save_every=10, picture_every=20)
# A few iterations, for tests.
SMOKE_BUDGET = dict(num_epochs=3, num_iterations_per_epoch=4, num_val_iterations_per_epoch=2, save_every=1,
                    picture_every=1)
# VICReg (Bardes, Ponce & LeCun, ICLR 2022) weight 0.01 (untuned): on the tiny network the VICReg term starts near
# 49 (pooled bottleneck features nearly constant across samples), so it weighs about half the initial
# reconstruction loss.
VICREG_WEIGHT = 0.01
# The weight sweep's base: the tiny run without decoder skips, VICReg between
# session partners (each partner cropped and augmented on its own, intensity and contrast included) on every
# encoder stage's pool, concatenated, which is also the checkpoint's embedding (`embedding_pooling = "stages"`).
TINY_VICREG_STAGES = replace(TINY_MAE, embedding_pooling="stages", objective=replace(
    TINY_MAE.objective, decoder_skips="none", vicreg_weight=VICREG_WEIGHT, vicreg_pairs="sessions",
    vicreg_stages=ALL_STAGES))
# VICReg's expander on the tiny network: the paper's three layers at four times the representation's width
# (2048 -> 8192 there; 120 pooled values -> 512 here).
TINY_EXPANDER = (512, 512, 512)
# An expander narrow enough for a batch of 16 (16 per branch): with N samples the centred features have rank
# N - 1, so VICReg's covariance term alone keeps the variance hinge above a floor that grows with the width
# (fomo_nnunet.ssl.losses.vicreg_hinge_floor: 512 wide, about 0.8 at N = 16 and 1.5 at N = 2; 128 wide, 0.1 at
# N = 16).
TINY_EXPANDER_NARROW = (128, 128, 128)

# The FOMO26 organisers' recipe: AMAES (Munk et al. 2024, arXiv:2408.00640) as the public asparagus configs state
# it (github.com/Sllambias/asparagus, read at commit 338450ba; docs/pretraining-recipes.md lists each setting
# with what differs from our default):
# - mask unit 4 voxels: `training.mask_patch_size: ${model.patch_embed_size}` (configs/default_pretrain.yaml) with
#   `patch_embed_size: 4` (configs/model/core/resenc_unet.yaml); mask ratio 0.6 (`training.mask_ratio`,
#   configs/default_pretrain.yaml); masked units set to 0, one mask for all channels, drawn per sample
#   (gardening_tools' Torch_Mask, github.com/Sllambias/gardening_tools,
#   gardening_tools/modules/transforms/masking.py);
# - MSE over all voxels: `rec_loss_masked_only: False` (configs/default_pretrain.yaml) with nn.MSELoss
#   (asparagus/modules/lightning_modules/self_supervised.py);
# - AdamW, lr 1e-4, weight decay 3e-5 (`pretrain_optim`, `pretrain_lr`, `weight_decay`,
#   configs/model/core/resenc_unet.yaml), betas (0.9, 0.98) (asparagus/modules/lightning_modules/base_module.py);
# - linear warm-up over 2 % of training (`warmup_ratio: 0.02`, configs/default_pretrain.yaml), then cosine to 0
#   (asparagus/functional/lr_scheduling.py); no gradient clipping (the self-supervised module sets none);
# - decoder without skips: `use_skip_connections: False` in the FOMO300K ResEnc-B pretraining run
#   (configs/projects/development/runs_pretrain/resenc_amaes_debug.yaml);
# - bf16 mixed precision (`precision: "bf16-mixed"`, configs/hardware/2gpus.yaml; the trainer's autocast_dtype);
#   torch.compile in its default mode is what nnU-Net already does on CUDA.
# Not expressed here: the network (ResEnc-B) and patch/batch (160^3, 16 per GPU) come from the plans; the sample
# budget (6 M samples) from the epochs; the target clamp to [-2, 4] and asparagus' intensity augmentations are
# not ours; masks are drawn with round() instead of floor() (at most one unit apart).
AMAES_OBJECTIVE = MAEObjective(mask_ratio=0.6, block_size=4, learned_mask_token=False, loss_kind="mse",
                               loss_region="all", decoder_skips="none", vicreg_weight=0.0)
# Its embedding (tasks 6 and 7) stays the global average pool of the deepest stage (DEFAULT_POOLING, what a
# checkpoint without a record gets), not the every-stage pooling our recipes chose.
AMAES_OPTIMISATION = dict(initial_lr=1e-4, weight_decay=3e-5, adamw_betas=(0.9, 0.98), warmup_fraction=0.02,
                          grad_clip=float("inf"), objective=AMAES_OBJECTIVE, embedding_pooling=DEFAULT_POOLING)
AMAES = replace(MAE, **AMAES_OPTIMISATION)
# AMAES on the tiny budget: the mask unit stays 4 voxels, not scaled (asparagus states it in voxels, the ResEnc
# patch-embedding size; at the tiny plans' 4 mm spacing it covers 16 mm instead of 4 mm, but 4 mm would be single
# voxels, whose masking interpolation undoes); the learning rate stays AMAES' 1e-4 (not the tiny budget's 3e-3).
TINY_AMAES = replace(TINY_MAE, **AMAES_OPTIMISATION)
