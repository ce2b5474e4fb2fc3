"""What the MAE trainer (trainers/nnUNetTrainerFomoMAE.py) does with the self-supervised pieces, as functions of
plain values: masked forwards, the two-view step, the epoch's log lines, reconstruction pictures, session
partners. The trainer calls them with its network, its recipe (fomo_nnunet.ssl.recipe) and its batches.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from fomo_nnunet.plots import plot_mae_reconstruction
from fomo_nnunet.ssl.losses import LOSS_REGIONS, variance_hinge, vicreg_hinge_floor, vicreg_loss
from fomo_nnunet.ssl.masking import apply_mask, block_mask
from fomo_nnunet.ssl.recipe import VICREG_LOG_KEYS, MAEObjective, PretrainRecipe
from fomo_nnunet.ssl.sessions import read_subjects, session_partners


def masked_views(data: torch.Tensor, objective: MAEObjective, generator: torch.Generator, token=None):
    """(mask, masked input): `objective`'s block mask drawn per sample from `generator`, applied to `data`
    (masked voxels set to 0, or to the learned `token` per channel)."""
    mask = block_mask(tuple(data.shape[2:]), data.shape[0], objective.block_size, objective.mask_ratio,
                      generator=generator, device=data.device)
    return mask, apply_mask(data, mask, token)


def two_view_inputs(data, brain, clean, pairs: str):
    """The inputs of a two-view step: the batch twice ("views"), or as the loader gave it, n cases and their n
    session partners ("sessions")."""
    if pairs == "views":
        return torch.cat([data, data]), torch.cat([brain, brain]), torch.cat([clean, clean])
    return data, brain, clean


def mean_of_halves(loss, pred, clean, mask, brain) -> torch.Tensor:
    """The mean of the reconstruction losses of a two-view batch's halves."""
    n = pred.shape[0] // 2
    return (loss(pred[:n], clean[:n], mask[:n], brain[:n]) + loss(pred[n:], clean[n:], mask[n:], brain[n:])) / 2


def two_view_loss(reconstruction: torch.Tensor, pooled: torch.Tensor, objective: MAEObjective,
                  features: torch.Tensor | None = None):
    """(total, terms): mae_weight * `reconstruction` + vicreg_weight * VICReg of the halves' pooled features
    `pooled` (2n, features: the bottleneck, or the objective's stages concatenated, through the expander if
    there is one); `terms` are the logged parts ("loss" the unweighted reconstruction loss;
    "vicreg_feature_variance" the variance hinge of `features`, the pools before an expander; None: no
    expander, the hinge of `pooled`)."""
    z1, z2 = pooled.chunk(2)
    v = vicreg_loss(z1, z2, *objective.vicreg_coefficients)
    terms = {"loss": reconstruction, "vicreg_losses": v.loss, "vicreg_invariance": v.invariance,
             "vicreg_variance": v.variance, "vicreg_covariance": v.covariance,
             # the pools' own hinge: the variance term itself when the loss sees the pools (no expander)
             "vicreg_feature_variance": v.variance.detach() if features is None else variance_hinge(*features.chunk(2))}
    return objective.mae_weight * reconstruction + objective.vicreg_weight * v.loss, terms


def epoch_lines(log, objective: MAEObjective) -> list[tuple]:
    """The epoch's log lines from the logger's `get_value`: losses, and the VICReg terms when there are any."""
    lines = [("train_loss" if objective.mae_weight == 1 else f"train_loss (reconstruction, x {objective.mae_weight})",
              np.round(log("train_losses", -1), 5)),
             (f"val_loss ({LOSS_REGIONS[objective.loss_region]})", np.round(log("val_losses", -1), 5))]
    if objective.vicreg_weight > 0:
        lines.insert(1, (f"vicreg (x {objective.vicreg_weight})", np.round(log("vicreg_losses", -1), 5),
                         *(f"{name.replace('_', ' ')} {np.round(log('vicreg_' + name, -1), 5)}"
                           for name in ("invariance", "variance", "covariance")
                           + (("feature_variance",) if objective.vicreg_expander else ()))))
    return lines


def picture_example(**rows: torch.Tensor) -> dict[str, np.ndarray]:
    """The first sample's first channel of each tensor, for the reconstruction pictures."""
    return {name: t[0, 0].float().cpu().numpy() for name, t in rows.items()}


def write_reconstruction_pictures(output_folder: str, epoch: int, num_epochs: int, example: dict | None,
                                  recipe: PretrainRecipe) -> None:
    """reconstruction.png (and reconstructions/epoch_NNNN.png) every `picture_every` epochs, the first and the last
    of `num_epochs`."""
    due = (epoch + 1) % recipe.picture_every == 0 or epoch in (0, num_epochs - 1)
    if example is None or not due:
        return
    o = recipe.objective
    folder = os.path.join(output_folder, "reconstructions")
    os.makedirs(folder, exist_ok=True)
    title = f"epoch {epoch + 1}: mask ratio {o.mask_ratio}, block {o.block_size}"
    if o.decoder_skips != "all":
        title += f", decoder skips {o.decoder_skips}"
    for path in (os.path.join(folder, f"epoch_{epoch + 1:04d}.png"), os.path.join(output_folder, "reconstruction.png")):
        plot_mae_reconstruction(path, example, title, LOSS_REGIONS[o.loss_region])


def training_session_partners(preprocessed_base: str, raw_folder: str | None, identifiers, p_other: float,
                              log=print) -> dict[str, list[str]]:
    """The training cases' session partners, from subjects.json beside the preprocessed dataset.json
    (`fomo-nnunet plan pretrain` copies it there, so a cluster needs no nnUNet_raw), else the raw one's."""
    folders = [Path(preprocessed_base)] + ([Path(raw_folder)] if raw_folder else [])
    partners = session_partners(read_subjects(*folders), identifiers)
    paired = sum(1 for others in partners.values() if others)
    log(f"session pairs: {paired} of {len(partners)} training cases have another sequence of their session; the "
        f"partner is another sequence with probability {p_other}, else a second view of the case")
    return partners


def reconstruction_network(configuration_manager, num_input_channels: int) -> torch.nn.Module:
    """The plans' U-Net with one output per input channel (a reconstruction head, whatever the dataset's labels).
    Without deep supervision only the last output layer is used; the lower-resolution ones never get a gradient,
    and DDP would wait for theirs forever: they stay in the state dict, frozen."""
    from fomo_nnunet.models.network_record import build_plans_network

    network = build_plans_network(configuration_manager, num_input_channels, num_input_channels)
    for layer in list(getattr(network.decoder, "seg_layers", []))[:-1]:
        layer.requires_grad_(False)
    return network


def pretrain_optimizer(network: torch.nn.Module, recipe: PretrainRecipe, num_input_channels: int, device,
                       lr: float, weight_decay: float, num_epochs: int):
    """(AdamW with the recipe's betas, its EpochLR): warmup over the recipe's fraction of `num_epochs`, then cosine
    to zero; with `learned_mask_token`, the token (one value per channel) is registered on the bare network first
    (saved, resumed and synchronised with it). `network` may be wrapped (DDP, torch.compile): the optimiser holds
    the wrapper's parameters."""
    from fomo_nnunet.training import COSINE, EpochLR, EpochSchedule, unwrap

    net = unwrap(network)
    if recipe.objective.learned_mask_token and not hasattr(net, "fomo_mask_token"):
        net.register_parameter("fomo_mask_token", torch.nn.Parameter(torch.zeros(num_input_channels, device=device)))
    o = recipe.objective
    if o.vicreg_weight > 0 and o.vicreg_expander and not hasattr(net, EXPANDER):
        net.add_module(EXPANDER, vicreg_expander(pooled_width(net, o), o.vicreg_expander).to(device))
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=weight_decay,
                                  betas=tuple(recipe.adamw_betas))
    return optimizer, EpochLR(optimizer, EpochSchedule(num_epochs, recipe.warmup_epochs(num_epochs), decay=COSINE))


EXPANDER = "fomo_vicreg_expander"  # the expander's module name on the network (pretraining only)


def vicreg_expander(in_features: int, widths: tuple[int, ...]) -> torch.nn.Sequential:
    """VICReg's expander (Bardes, Ponce & LeCun, ICLR 2022; `Projector` in github.com/facebookresearch/vicreg):
    Linear-BatchNorm-ReLU to each width but the last, then a Linear to the last width without bias."""
    sizes = [in_features, *widths]
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [torch.nn.Linear(a, b), torch.nn.BatchNorm1d(b), torch.nn.ReLU(inplace=True)]
    layers.append(torch.nn.Linear(sizes[-2], sizes[-1], bias=False))
    return torch.nn.Sequential(*layers)


def pooled_width(network, objective: MAEObjective) -> int:
    """The length of the pooled VICReg features of `network`'s encoder: the chosen stages' widths summed."""
    from fomo_nnunet.models.heads import encoder_stage_widths
    from fomo_nnunet.ssl.skips import resolve_stages

    widths = encoder_stage_widths(network)
    return sum(widths[i] for i in resolve_stages(objective.vicreg_stages, len(widths)))


def vicreg_floor_line(network, objective: MAEObjective, batch_size: int) -> str | None:
    """The log line that says how low the variance hinge can go at this batch and feature width
    (fomo_nnunet.ssl.losses.vicreg_hinge_floor), with advice when the floor is 1 or more; None without VICReg."""
    from fomo_nnunet.training import unwrap

    if not objective.vicreg_weight > 0:
        return None
    dims = objective.vicreg_expander[-1] if objective.vicreg_expander else pooled_width(unwrap(network), objective)
    _, variance_weight, covariance_weight = objective.vicreg_coefficients
    floor = vicreg_hinge_floor(dims, batch_size, variance_weight, covariance_weight)
    line = (f"VICReg on {dims} features at {batch_size} samples per branch: its covariance term alone keeps the "
            f"variance hinge at or above {floor:.2f} (of 2)")
    if floor >= 1:
        line += (": the features cannot spread at this batch; raise the plans' batch_size or narrow the features "
                 "(vicreg_expander's last width)")
    return line


def initial_patch(patch, augmentation) -> np.ndarray:
    """The loader's initial crop: large enough for the pretraining augmentation's (smaller) rotations and
    scalings of `patch` (nnU-Net's get_patch_size)."""
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

    rot = np.deg2rad(augmentation.max_rotation_deg)
    return get_patch_size(patch, (-rot, rot), (-rot, rot), (-rot, rot), augmentation.scaling)


def attach_skip_gate(network, objective: MAEObjective, batch_size: int):
    """The decoder's skip gate (fomo_nnunet.ssl.skips.SkipGate) when `objective` needs one, else None. Attached
    after the network exists (and inside DDP's forward): the gate is a hook, not a module."""
    from fomo_nnunet.ssl.skips import SkipGate, resolve_stages
    from fomo_nnunet.training import unwrap

    if not objective.gates_skips:
        return None
    if objective.vicreg_weight > 0 and batch_size < 2:
        raise ValueError(f"vicreg_weight > 0 needs a batch of at least 2 per process (VICReg's variance is over the "
                         f"batch); this process has {batch_size}")
    net = unwrap(network)
    stages = getattr(net.encoder, "stages", None)
    if objective.vicreg_weight > 0 and stages is not None:  # fail before training, not at the first step
        resolve_stages(objective.vicreg_stages, len(stages))
    return SkipGate(objective.decoder_skips, objective.skip_drop_p, stages=objective.vicreg_stages,
                    expander=getattr(net, EXPANDER, None)).attach(net.decoder)


def vicreg_epoch_means(train_outputs: list[dict], from_all_ranks) -> dict[str, float]:
    """The epoch's mean of each VICReg term over every step of every rank (`from_all_ranks` gathers a value)."""
    from nnunetv2.utilities.collate_outputs import collate_outputs

    outputs = collate_outputs(train_outputs)
    return {key: float(np.mean(from_all_ranks(float(np.mean(outputs[key]))))) for key in VICREG_LOG_KEYS}


class PretrainingData:
    """Mixin for the MAE trainer (before nnU-Net's trainer in the bases): what its loaders feed. It reads the
    trainer's `recipe` (a PretrainRecipe), `configuration_manager`, `plans_manager`,
    `preprocessed_dataset_folder_base` and `print_to_log_file`, and wraps nnU-Net's `seeded_augmenters` input.

    - the pretraining augmentation (fomo_nnunet.ssl.augment), with the brain mask and the clean scan as targets;
    - the loader's initial crop sized for that augmentation (`initial_patch`);
    - with VICReg between session partners, training batches of n cases and their n partners (SessionPairLoader).
    """

    def _mask_channels(self) -> list[int]:
        return [i for i, u in enumerate(self.configuration_manager.use_mask_for_norm or []) if u]

    def get_training_transforms(self, patch_size, *args, **kwargs):
        from fomo_nnunet.ssl.augment import training_transforms

        return training_transforms(tuple(patch_size), self.recipe.augmentation, self._mask_channels())

    def get_validation_transforms(self, *args, **kwargs):
        from fomo_nnunet.ssl.augment import validation_transforms

        return validation_transforms(self._mask_channels())

    def seeded_augmenters(self, loader_tr, loader_val, processes: int):
        from nnunetv2.paths import nnUNet_raw

        from fomo_nnunet.ssl.sessions import SessionPairLoader

        o = self.recipe.objective
        if o.vicreg_pairs == "sessions":  # the training batches only; validation is the reconstruction loss
            raw = f"{nnUNet_raw}/{self.plans_manager.dataset_name}" if nnUNet_raw else None
            partners = training_session_partners(self.preprocessed_dataset_folder_base, raw, loader_tr.indices,
                                                 o.session_p_other, log=self.print_to_log_file)
            loader_tr = SessionPairLoader(loader_tr, partners, o.session_p_other)
        return super().seeded_augmenters(loader_tr, loader_val, processes)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, _, mirror_axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        return rotation, dummy_2d, initial_patch(self.configuration_manager.patch_size, self.recipe.augmentation), \
            mirror_axes
