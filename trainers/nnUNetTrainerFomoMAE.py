"""Masked-autoencoder pretraining inside nnU-Net: `nnUNetv2_train ... -tr nnUNetTrainerFomoMAE`.

The network is the plans' U-Net with one output per input channel; a block mask hides part of
each patch, the network reconstructs the scan, and the loss counts masked voxels inside the
brain only (`loss_region`: "masked_brain"; "masked" or "all" voxels for other recipes, such as AMAES below). Masking, loss and augmentation are library functions (fomo_nnunet.ssl); the training
step, schedule, epoch end and self-describing checkpoints come from the trainer toolkit
(fomo_nnunet.training). This class is the recipe: class attributes, so a variant is a subclass that
sets a few of them, and the methods that make it masked reconstruction.

Objectives that shape the deep stages (what pooling heads and embeddings read): `decoder_skips`
"none" or "drop" keeps the encoder skips from the decoder during pretraining (fomo_nnunet.ssl.skips),
and `vicreg_weight` > 0 adds VICReg on the pooled bottleneck of two masked views of each batch
(fomo_nnunet.ssl.losses.vicreg_loss): two masks of each patch (`vicreg_pairs = "views"`), or each case
and a partner from its imaging session, another sequence with probability `session_p_other`
(`"sessions"`, fomo_nnunet.ssl.sessions). Both act through a forward pre-hook on the decoder; the
network and its state dict are unchanged, so downstream loading is too.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
import torch
from nnunetv2.paths import nnUNet_raw
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs

from fomo_nnunet.models.embedding_stats import check_pooling
from fomo_nnunet.models.network_record import build_plans_network
from fomo_nnunet.plots import plot_mae_reconstruction
from fomo_nnunet.ssl import (LOSS_REGIONS, SkipGate, apply_mask, block_mask, check_skip_settings,
                             masked_reconstruction_loss, VICREG_TERM_NAMES, vicreg_history, vicreg_loss)
from fomo_nnunet.ssl.augment import PretrainAugmentation, training_transforms, unpack_target, validation_transforms
from fomo_nnunet.ssl.sessions import SessionPairLoader, read_subjects, session_partners
from fomo_nnunet.training import (COSINE, AmpStep, Budget, DescribedCheckpoints, DistributedRun, EpochEnd, EpochLR,
                                  EpochSchedule, PreemptibleRun, SeededRun, unwrap)
from fomo_nnunet.training.fast import StepSettings


VICREG_PAIRS = ("views", "sessions")
VIEW_DESCRIPTIONS = {  # checkpoint metadata: what the VICReg term compared
    "views": "two independently masked views per batch",
    "sessions": "each case and a partner from its session: another sequence with probability {p}, else the case "
                "itself; each cropped, augmented and masked on its own"}
VICREG_LOG_KEYS = ("vicreg_losses", "vicreg_invariance", "vicreg_variance", "vicreg_covariance")


class nnUNetTrainerFomoMAE(StepSettings, DistributedRun, SeededRun, AmpStep, EpochEnd, DescribedCheckpoints, Budget,
                           PreemptibleRun, nnUNetTrainer):
    # speed (fomo_nnunet.training.fast): nnU-Net's defaults until a GPU campaign shows another setting faster and sane
    autocast_dtype: str = "float16"
    compile_network: bool | None = None  # None: nnU-Net's choice (compiled on CUDA unless nnUNet_compile=f)
    channels_last: bool = False
    # masking (nnssl's recipe for a 1 mm, 160^3 patch: 75 % of 16^3 blocks)
    mask_ratio: float = 0.75
    block_size: int = 16
    learned_mask_token: bool = False
    loss_kind: str = "mse"
    loss_region: str = "masked_brain"   # which voxels the loss counts: fomo_nnunet.ssl.losses.LOSS_REGIONS
    # optimisation: AdamW, linear warmup then cosine to zero, gradient clipping
    epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50
    lr: float = 1e-3
    weight_decay_value: float = 0.05
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    adamw_betas: tuple[float, float] = (0.9, 0.95)
    augmentation: PretrainAugmentation = PretrainAugmentation()
    # objectives that shape the deep stages (defaults: plain MAE, every skip on)
    decoder_skips: str = "all"          # "all"; "none": the decoder sees the bottleneck only; "drop": at random
    skip_drop_p: float = 0.5            # "drop": probability that one skip of one sample is zeroed
    vicreg_weight: float = 0.0          # > 0: two masked views per step + weight * VICReg(pooled bottlenecks)
    vicreg_coefficients: tuple[float, float, float] = (25.0, 25.0, 1.0)  # invariance, variance, covariance
    vicreg_pairs: str = "views"         # "views": two masks of each patch; "sessions": a case and a session partner
    session_p_other: float = 0.5        # "sessions": how often the partner is another sequence (else the case)
    # checkpoints (with fomo_metadata) and pictures
    checkpoint_every: int = 50
    picture_every: int = 10
    best_is_lowest = True  # checkpoint_best: the lowest validation loss
    # validation masks (and skip drops): the same for every run and epoch (losses compare); training
    # masks and skip drops derive from FOMO_SEED
    val_mask_seed: int = 11234
    val_skip_seed: int = 21234
    # probe-ready embeddings: checkpoint_final carries embedding statistics over this many pretraining cases
    embedding_stats_cases: int = 512
    # the embedding's pooling, recorded in every checkpoint: "deepest" stage or every encoder "stages"
    embedding_pooling: str = "deepest"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self._mask_generator: torch.Generator | None = None
        self._val_example: dict[str, np.ndarray] | None = None
        self._check_objective_settings()
        self._skip_generator: torch.Generator | None = None
        self._skip_gate: SkipGate | None = None
        self._step_terms: dict[str, torch.Tensor] = {}  # the last hybrid step's losses, for train_step
        if self.vicreg_weight > 0:
            for key in VICREG_LOG_KEYS:
                self.logger.local_logger.my_fantastic_logging[key] = []

    @property
    def objective(self) -> str:
        return "mae+vicreg" if self.vicreg_weight > 0 else "mae"

    def _check_objective_settings(self) -> None:
        check_skip_settings(self.decoder_skips, self.skip_drop_p)
        check_pooling(self.embedding_pooling, "embedding_pooling")
        if self.loss_region not in LOSS_REGIONS:
            raise ValueError(f"loss_region must be one of {', '.join(LOSS_REGIONS)}, got {self.loss_region!r}")
        w = self.vicreg_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or w < 0:
            raise ValueError(f"vicreg_weight must be a finite number >= 0 (0: no VICReg term), got {w!r}")
        if self.vicreg_pairs not in VICREG_PAIRS:
            raise ValueError(f"vicreg_pairs must be one of {', '.join(VICREG_PAIRS)}, got {self.vicreg_pairs!r}")
        if self.vicreg_pairs == "sessions" and not w > 0:
            raise ValueError("vicreg_pairs = 'sessions' pairs cases for the VICReg term; set vicreg_weight > 0")
        p = self.session_p_other
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"session_p_other must be a probability in [0, 1], got {p!r}")
        c = self.vicreg_coefficients
        if len(c) != 3 or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not np.isfinite(x) or x < 0
                              for x in c):
            raise ValueError(f"vicreg_coefficients must be three finite numbers >= 0 (invariance, variance, "
                             f"covariance), got {c!r}")

    def initialize(self):
        super().initialize()
        if self._skip_gate is None and (self.decoder_skips != "all" or self.vicreg_weight > 0):
            if self.vicreg_weight > 0 and self.batch_size < 2:
                raise ValueError(f"vicreg_weight > 0 needs a batch of at least 2 per process (VICReg's variance "
                                 f"is over the batch); this process has {self.batch_size}")
            # after the network exists (and inside DDP's forward): the gate is a hook, not a module
            self._skip_gate = SkipGate(self.decoder_skips, self.skip_drop_p).attach(unwrap(self.network).decoder)

    # ---- network, optimiser, loss -------------------------------------------------------------
    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        # A reconstruction head: one output per input channel, whatever the dataset's labels say.
        network = build_plans_network(configuration_manager, num_input_channels, num_input_channels)
        # Without deep supervision only the last output layer is used; the lower-resolution ones never
        # get a gradient, and DDP would wait for theirs forever. They stay in the state dict, frozen.
        for layer in list(getattr(network.decoder, "seg_layers", []))[:-1]:
            layer.requires_grad_(False)
        return network

    def configure_optimizers(self):
        net = unwrap(self.network)  # by its wrappers: nnU-Net wraps the network in DDP after this call
        if self.learned_mask_token and not hasattr(net, "fomo_mask_token"):
            token = torch.nn.Parameter(torch.zeros(self.num_input_channels, device=self.device))
            net.register_parameter("fomo_mask_token", token)  # saved, resumed and synchronised with the network
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay,
                                      betas=tuple(self.adamw_betas))
        warmup = max(1, round(self.warmup_fraction * self.num_epochs)) if self.warmup_fraction > 0 else 0
        return optimizer, EpochLR(optimizer, EpochSchedule(self.num_epochs, warmup, decay=COSINE))

    def _build_loss(self):
        # (pred, target, mask, brain)
        return partial(masked_reconstruction_loss, kind=self.loss_kind, region=self.loss_region)

    # ---- data --------------------------------------------------------------------------------
    def _mask_channels(self) -> list[int]:
        use = self.configuration_manager.use_mask_for_norm or []
        return [i for i, u in enumerate(use) if u]

    def get_training_transforms(self, patch_size, *args, **kwargs):
        return training_transforms(tuple(patch_size), self.augmentation, self._mask_channels())

    def get_validation_transforms(self, *args, **kwargs):
        return validation_transforms(self._mask_channels())

    def seeded_augmenters(self, loader_tr, loader_val, processes: int):
        if self.vicreg_pairs == "sessions":  # the training batches only; validation is the reconstruction loss
            loader_tr = SessionPairLoader(loader_tr, self._session_partners(loader_tr.indices), self.session_p_other)
        return super().seeded_augmenters(loader_tr, loader_val, processes)

    def _session_partners(self, identifiers) -> dict[str, list[str]]:
        """The training cases' session partners, from subjects.json beside the preprocessed dataset.json
        (`fomo-nnunet plan pretrain` copies it there, so a cluster needs no nnUNet_raw), else the raw one's."""
        folders = [Path(self.preprocessed_dataset_folder_base)]
        if nnUNet_raw:  # a dataset planned before plans carried the session list
            folders.append(Path(nnUNet_raw) / self.plans_manager.dataset_name)
        subjects = read_subjects(*folders)
        partners = session_partners(subjects, identifiers)
        paired = sum(1 for others in partners.values() if others)
        self.print_to_log_file(f"session pairs: {paired} of {len(partners)} training cases have another sequence "
                               f"of their session; the partner is another sequence with probability "
                               f"{self.session_p_other}, else a second view of the case")
        return partners

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, _, mirror_axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        # the loader's initial crop only needs to cover our (smaller) rotations and scalings
        rot = np.deg2rad(self.augmentation.max_rotation_deg)
        initial = get_patch_size(self.configuration_manager.patch_size, (-rot, rot), (-rot, rot), (-rot, rot),
                                 self.augmentation.scaling)
        return rotation, dummy_2d, initial, mirror_axes

    # ---- steps -------------------------------------------------------------------------------
    def _on_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        data = batch["data"].to(self.device, non_blocking=True)
        brain, clean = unpack_target([t.to(self.device, non_blocking=True) for t in batch["target"]])
        return data, brain, clean

    def _forward_masked(self, batch: dict, generator: torch.Generator):
        data, brain, clean = self._on_device(batch)
        mask = block_mask(tuple(data.shape[2:]), data.shape[0], self.block_size, self.mask_ratio,
                          generator=generator, device=self.device)
        masked = apply_mask(data, mask, getattr(unwrap(self.network), "fomo_mask_token", None))
        with self.autocast():
            pred = self.network(masked)
            loss = self.loss(pred.float(), clean, mask, brain)
        return loss, (data, masked, pred, clean, mask)

    def training_loss(self, batch: dict) -> torch.Tensor:
        if self.vicreg_weight > 0:
            return self._two_view_loss(batch)
        return self._forward_masked(batch, self._mask_generator)[0]

    def _two_view_loss(self, batch: dict) -> torch.Tensor:
        """Two independently masked views in one forward (one DDP forward per step): the batch twice
        ("views"), or the loader's n cases and their n session partners ("sessions"); the mean of the
        two halves' reconstruction losses + vicreg_weight * VICReg of their pooled bottlenecks."""
        data, brain, clean = self._on_device(batch)
        if self.vicreg_pairs == "views":
            data, brain, clean = torch.cat([data, data]), torch.cat([brain, brain]), torch.cat([clean, clean])
        n = data.shape[0] // 2
        mask = block_mask(tuple(data.shape[2:]), 2 * n, self.block_size, self.mask_ratio,
                          generator=self._mask_generator, device=self.device)
        masked = apply_mask(data, mask, getattr(unwrap(self.network), "fomo_mask_token", None))
        with self.autocast():
            pred = self.network(masked).float()
            reconstruction = (self.loss(pred[:n], clean[:n], mask[:n], brain[:n])
                              + self.loss(pred[n:], clean[n:], mask[n:], brain[n:])) / 2
        z1, z2 = self._skip_gate.take_pooled().chunk(2)
        terms = vicreg_loss(z1, z2, *self.vicreg_coefficients)
        self._step_terms = {"loss": reconstruction, "vicreg_losses": terms.loss, "vicreg_invariance": terms.invariance,
                            "vicreg_variance": terms.variance, "vicreg_covariance": terms.covariance}
        return reconstruction + self.vicreg_weight * terms.loss

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        if self.vicreg_weight > 0:  # "loss" (train_losses) stays the reconstruction loss; VICReg beside it
            out.update({k: v.detach().cpu().numpy() for k, v in self._step_terms.items()})
        return out

    def on_train_epoch_end(self, train_outputs: list[dict]):
        if self.vicreg_weight > 0:
            outputs = collate_outputs(train_outputs)
            for key in VICREG_LOG_KEYS:
                value = np.mean(self.from_all_ranks(float(np.mean(outputs[key]))))
                self.logger.log(key, float(value), self.current_epoch)
        super().on_train_epoch_end(train_outputs)

    def start_random_streams(self) -> None:
        """The training masks and skip drops: a different stream per DDP rank, reproducible per run seed."""
        self._mask_generator = torch.Generator(device=self.device).manual_seed(self.stream_seed("mask"))
        self._skip_generator = torch.Generator(device=self.device).manual_seed(self.stream_seed("skip_drop"))

    def on_train_start(self):
        super().on_train_start()
        self.start_random_streams()

    def random_generators(self) -> dict[str, torch.Generator]:
        return {"mask": self._mask_generator, "skip_drop": self._skip_generator}

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        if self._skip_gate is not None:
            self._skip_gate.generator, self._skip_gate.capture = self._skip_generator, self.vicreg_weight > 0

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        # the same masks (and skip drops) every epoch, so validation losses are comparable across epochs
        self._val_generator = torch.Generator(device=self.device).manual_seed(self.val_mask_seed + self.local_rank)
        if self._skip_gate is not None:
            self._skip_gate.generator = torch.Generator(device=self.device).manual_seed(self.val_skip_seed +
                                                                                        self.local_rank)
            self._skip_gate.capture = False  # validation: the reconstruction loss alone
        self._val_example = None

    def validation_step(self, batch: dict) -> dict:
        loss, (data, masked, pred, clean, mask) = self._forward_masked(batch, self._val_generator)
        if self._val_example is None:  # the first case of the epoch, for the pictures
            rows = {"input": data, "masked input": masked, "reconstruction": pred, "target": clean, "mask": mask}
            self._val_example = {name: t[0, 0].float().cpu().numpy() for name, t in rows.items()}
        return {"loss": loss.detach().cpu().numpy()}

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        loss = np.mean(self.from_all_ranks(np.mean(collate_outputs(val_outputs)["loss"])))
        self.logger.log("val_losses", float(loss), self.current_epoch)

    # ---- epoch end: log, checkpoint_best by the validation loss, pictures ----------------------
    def epoch_lines(self) -> list[tuple]:
        log = self.logger.get_value
        lines = [("train_loss", np.round(log("train_losses", -1), 5)),
                 (f"val_loss ({LOSS_REGIONS[self.loss_region]})", np.round(log("val_losses", -1), 5))]
        if self.vicreg_weight > 0:
            lines.insert(1, (f"vicreg (x {self.vicreg_weight})", np.round(log("vicreg_losses", -1), 5),
                             *(f"{name} {np.round(log('vicreg_' + name, -1), 5)}"
                               for name in ("invariance", "variance", "covariance"))))
        return lines

    def selection(self) -> tuple[float, str]:
        val_loss = self.logger.get_value("val_losses", -1)
        return val_loss, f"New best validation reconstruction loss: {np.round(val_loss, 5)}"

    def write_pictures(self, epoch: int) -> None:
        self.plot_losses(f"{self.__class__.__name__}: reconstruction ({self.loss_kind}) on "
                         f"{LOSS_REGIONS[self.loss_region]}",
                         {"learning rate": "lrs"}, "learning rate")
        due = (epoch + 1) % self.picture_every == 0 or epoch in (0, self.num_epochs - 1)
        if self._val_example is not None and due:
            folder = os.path.join(self.output_folder, "reconstructions")
            os.makedirs(folder, exist_ok=True)
            title = f"epoch {epoch + 1}: mask ratio {self.mask_ratio}, block {self.block_size}"
            if self.decoder_skips != "all":
                title += f", decoder skips {self.decoder_skips}"
            loss_on = LOSS_REGIONS[self.loss_region]
            for path in (os.path.join(folder, f"epoch_{epoch + 1:04d}.png"),
                         os.path.join(self.output_folder, "reconstruction.png")):
                plot_mae_reconstruction(path, self._val_example, title, loss_on)

    # ---- self-describing checkpoints (fomo_nnunet.training.DescribedCheckpoints) ---------------
    def objective_settings(self) -> dict:
        return {"mask_ratio": self.mask_ratio, "block_size": self.block_size,
                "learned_mask_token": self.learned_mask_token, "loss": self.loss_kind,
                "loss_region": LOSS_REGIONS[self.loss_region], "optimizer": "AdamW", "lr": self.initial_lr,
                "adamw_betas": [float(b) for b in self.adamw_betas], "weight_decay": self.weight_decay,
                "warmup_fraction": self.warmup_fraction, "schedule": "warmup+cosine",
                "grad_clip": float(self.grad_clip) if np.isfinite(self.grad_clip) else None,  # None: none
                "autocast_dtype": self.autocast_dtype,
                **self._deep_stage_settings()}

    def _deep_stage_settings(self) -> dict:
        settings = {"decoder_skips": self.decoder_skips, "skip_drop_p": float(self.skip_drop_p),
                    "vicreg_weight": float(self.vicreg_weight)}
        if self.vicreg_weight > 0:
            invariance, variance, covariance = (float(c) for c in self.vicreg_coefficients)
            settings["vicreg"] = {"invariance": invariance, "variance": variance, "covariance": covariance,
                                  "features": "global average pool of the bottleneck, no projector",
                                  "pairs": self.vicreg_pairs,
                                  "views": VIEW_DESCRIPTIONS[self.vicreg_pairs].format(p=float(self.session_p_other))}
            if self.vicreg_pairs == "sessions":
                settings["vicreg"]["session_p_other"] = float(self.session_p_other)
            # the terms per epoch (the variance hinge near its maximum: collapsed features)
            logged = self.logger.local_logger.my_fantastic_logging
            settings["vicreg"]["history"] = vicreg_history({name: logged[key] for name, key in
                                                            zip(VICREG_TERM_NAMES, VICREG_LOG_KEYS)})
        return settings

    def on_train_end(self):
        # before nnU-Net's on_train_end writes checkpoint_final (and deletes checkpoint_latest), so that
        # its fomo_metadata carries them; checkpoint_best was written earlier, with other weights, without
        self.embedding_stats = self.corpus_embedding_stats(self.embedding_stats_cases)
        super().on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        # nnU-Net's validation segments the validation cases; a reconstruction model has nothing to
        # segment. Its validation is the held-out reconstruction loss logged every epoch.
        self.print_to_log_file("MAE pretraining: validation is the reconstruction loss on held-out scans "
                               "(progress.png, reconstruction.png); no segmentation validation to run.")


# ---- budgets: attribute sets placed before the trainer (as fomo_nnunet.finetune.TinyBudget) --------
class TinyPretraining:
    """The CPU demo's pretraining for tiny-preset plans (4 mm data, 32^3 patches): 500 steps, blocks of 16 mm."""
    block_size = 4
    epochs = 20
    iterations_per_epoch = 25
    val_iterations_per_epoch = 5
    lr = 3e-3
    checkpoint_every = 5
    picture_every = 5
    progress_plot_every = 5


class LongTinyPretraining(TinyPretraining):
    """Four times the tiny pretraining (2000 steps)."""
    epochs = 80
    checkpoint_every = 10
    picture_every = 20


class SmokePretraining(TinyPretraining):
    """A few iterations, for tests."""
    epochs = 3
    iterations_per_epoch = 4
    val_iterations_per_epoch = 2
    checkpoint_every = 1
    picture_every = 1


# ---- variants: a subclass changes a few attributes, as nnU-Net writes them ------------------------
class nnUNetTrainerFomoMAE_tiny(TinyPretraining, nnUNetTrainerFomoMAE):
    """CPU-sized run for the demo: 4 mm data, 32^3 patches, a few minutes on two cores."""


class nnUNetTrainerFomoMAE_tiny_80epochs(LongTinyPretraining, nnUNetTrainerFomoMAE_tiny):
    """Four times the tiny pretraining (2000 steps): do longer-pretrained features probe better?"""


class nnUNetTrainerFomoMAE_tiny_smoke(SmokePretraining, nnUNetTrainerFomoMAE_tiny):
    """A few iterations, for tests."""


class nnUNetTrainerFomoMAE_ratio60(nnUNetTrainerFomoMAE):
    """The FOMO26 organisers' / AMAES ratio."""
    mask_ratio = 0.6


class nnUNetTrainerFomoMAE_ratio90(nnUNetTrainerFomoMAE):
    mask_ratio = 0.9


class nnUNetTrainerFomoMAE_block8(nnUNetTrainerFomoMAE):
    block_size = 8


class nnUNetTrainerFomoMAE_block4(nnUNetTrainerFomoMAE):
    block_size = 4


class nnUNetTrainerFomoMAE_token(nnUNetTrainerFomoMAE):
    """Masked voxels replaced by a learned token instead of zero."""
    learned_mask_token = True


class nnUNetTrainerFomoMAE_250epochs(nnUNetTrainerFomoMAE):
    epochs = 250


class nnUNetTrainerFomoMAE_500epochs(nnUNetTrainerFomoMAE):
    epochs = 500


class nnUNetTrainerFomoMAE_2000epochs(nnUNetTrainerFomoMAE):
    epochs = 2000


# ---- objectives that shape the deep stages (what pooling heads and embeddings read) --------------
class nnUNetTrainerFomoMAE_noskip(nnUNetTrainerFomoMAE):
    """Skip connections off in pretraining: the decoder reconstructs from the bottleneck alone (AMAES, Munk et
    al. 2024, arXiv:2408.00640, the FOMO25 baseline; the FOMO26 organisers' ResEnc-B pretraining)."""
    decoder_skips = "none"


class nnUNetTrainerFomoMAE_skipdrop(nnUNetTrainerFomoMAE):
    """Each skip of each sample zeroed with probability `skip_drop_p` (0.5): skips help, but cannot be relied on."""
    decoder_skips = "drop"


class nnUNetTrainerFomoMAE_vicreg(nnUNetTrainerFomoMAE):
    """MAE + VICReg (Bardes, Ponce & LeCun, ICLR 2022) on the pooled bottleneck of two masked views; skips on.
    Weight 0.01 (untuned): on the tiny network the VICReg term starts near 49 (pooled bottleneck features
    nearly constant across samples), so it weighs about half the initial reconstruction loss."""
    vicreg_weight = 0.01


class nnUNetTrainerFomoMAE_noskip_vicreg(nnUNetTrainerFomoMAE_vicreg):
    """MAE without skips (AMAES) + VICReg on the pooled bottleneck of two masked views."""
    decoder_skips = "none"


class nnUNetTrainerFomoMAE_noskip_vicreg_sessions(nnUNetTrainerFomoMAE_noskip_vicreg):
    """MAE without skips + VICReg between each case and a partner from its imaging session (subjects.json):
    another sequence half of the time, else a second crop of the case (the FOMO25 method-track winner's
    positives were sequences of one session)."""
    vicreg_pairs = "sessions"


class nnUNetTrainerFomoMAE_tiny_noskip(TinyPretraining, nnUNetTrainerFomoMAE_noskip):
    """The tiny run without skips in pretraining."""


class nnUNetTrainerFomoMAE_tiny_skipdrop(TinyPretraining, nnUNetTrainerFomoMAE_skipdrop):
    """The tiny run with skips dropped at random."""


class nnUNetTrainerFomoMAE_tiny_vicreg(TinyPretraining, nnUNetTrainerFomoMAE_vicreg):
    """The tiny run with the VICReg term."""


class nnUNetTrainerFomoMAE_tiny_noskip_vicreg(TinyPretraining, nnUNetTrainerFomoMAE_noskip_vicreg):
    """The tiny run without skips, with the VICReg term."""


class nnUNetTrainerFomoMAE_tiny_noskip_vicreg_smoke(SmokePretraining, nnUNetTrainerFomoMAE_tiny_noskip_vicreg):
    """A few iterations, for tests."""


class nnUNetTrainerFomoMAE_tiny_noskip_vicreg_sessions(TinyPretraining, nnUNetTrainerFomoMAE_noskip_vicreg_sessions):
    """The tiny run without skips, with the VICReg term between session partners."""


class nnUNetTrainerFomoMAE_tiny_noskip_vicreg_sessions_smoke(SmokePretraining,
                                                             nnUNetTrainerFomoMAE_tiny_noskip_vicreg_sessions):
    """A few iterations, for tests."""


class nnUNetTrainerFomoMAE_tiny_block2_ratio60(TinyPretraining, nnUNetTrainerFomoMAE_ratio60):
    """AMAES' masking scaled to the tiny patch: 4^3-voxel blocks at ratio 0.6 on a 160^3 patch are 2^3 on 32^3."""
    block_size = 2


# ---- the FOMO26 organisers' recipe: AMAES (Munk et al. 2024, arXiv:2408.00640) as asparagus configures it --
class AmaesRecipe:
    """AMAES pretraining settings as the public asparagus configs state them (github.com/Sllambias/asparagus,
    read at commit 338450ba; docs/pretraining-recipes.md lists each with what differs from our default):

    - mask unit 4 voxels: `training.mask_patch_size: ${model.patch_embed_size}` (configs/default_pretrain.yaml)
      with `patch_embed_size: 4` (configs/model/core/resenc_unet.yaml); mask ratio 0.6 (`training.mask_ratio`,
      configs/default_pretrain.yaml); masked units set to 0, one mask for all channels, drawn per sample
      (gardening_tools' Torch_Mask, github.com/Sllambias/gardening_tools,
      gardening_tools/modules/transforms/masking.py);
    - MSE over all voxels: `rec_loss_masked_only: False` (configs/default_pretrain.yaml) with nn.MSELoss
      (asparagus/modules/lightning_modules/self_supervised.py);
    - AdamW, lr 1e-4, weight decay 3e-5 (`pretrain_optim`, `pretrain_lr`, `weight_decay`,
      configs/model/core/resenc_unet.yaml), betas (0.9, 0.98) (asparagus/modules/lightning_modules/base_module.py);
    - linear warm-up over 2 % of training (`warmup_ratio: 0.02`, configs/default_pretrain.yaml), then cosine to 0
      (asparagus/functional/lr_scheduling.py); no gradient clipping (the self-supervised module sets none);
    - decoder without skips: `use_skip_connections: False` in the FOMO300K ResEnc-B pretraining run
      (configs/projects/development/runs_pretrain/resenc_amaes_debug.yaml);
    - bf16 mixed precision (`precision: "bf16-mixed"`, configs/hardware/2gpus.yaml); torch.compile in its default
      mode (`compile_mode: "default"`, same file) is what nnU-Net already does on CUDA (compile_network None).

    Not expressed here: the network (ResEnc-B) and patch/batch (160^3, 16 per GPU) come from the plans; the
    sample budget (6 M samples) from the epochs; the target clamp to [-2, 4] and asparagus' intensity
    augmentations are not ours; masks are drawn with round() instead of floor() (at most one unit apart).
    Budgets (epochs, iterations) are not set here: place the budget after this mixin.
    """
    block_size = 4
    mask_ratio = 0.6
    learned_mask_token = False
    loss_kind = "mse"
    loss_region = "all"
    lr = 1e-4
    weight_decay_value = 3e-5
    adamw_betas = (0.9, 0.98)
    warmup_fraction = 0.02
    grad_clip = float("inf")
    decoder_skips = "none"
    vicreg_weight = 0.0
    autocast_dtype = "bfloat16"


class nnUNetTrainerFomoMAE_amaes(AmaesRecipe, nnUNetTrainerFomoMAE):
    """The FOMO26 organisers' AMAES recipe (AmaesRecipe) with our full budget (1000 x 250 steps)."""


class nnUNetTrainerFomoMAE_tiny_amaes(AmaesRecipe, TinyPretraining, nnUNetTrainerFomoMAE):
    """AMAES on the tiny budget (as nnUNetTrainerFomoMAE_tiny: 20 x 25 steps), with AMAES' settings.

    The mask unit stays 4 voxels, not scaled: asparagus states it in voxels (the ResEnc patch-embedding size);
    at the tiny plans' 4 mm spacing it covers 16 mm instead of 4 mm, but 4 mm would be single voxels, whose
    masking interpolation undoes. The learning rate stays AMAES' 1e-4 (not the tiny budget's 3e-3).
    One difference: float32 instead of bf16, as the tiny budget runs on CPUs, where bf16 autocast is slow.
    """
    autocast_dtype = "float16"  # nnU-Net's choice: fp16 autocast on CUDA, float32 on a CPU


class nnUNetTrainerFomoMAE_tiny_amaes_smoke(AmaesRecipe, SmokePretraining, nnUNetTrainerFomoMAE):
    """A few iterations of nnUNetTrainerFomoMAE_tiny_amaes, for tests."""
    autocast_dtype = "float16"


# ---- speed settings (docs/gpu.md: `fomo-nnunet bench campaign` times them against nnU-Net's trainer) -------
class nnUNetTrainerFomoMAE_eager(nnUNetTrainerFomoMAE):
    """Never compiled (nnU-Net's eager fp16 step)."""
    compile_network = False


class nnUNetTrainerFomoMAE_bf16(nnUNetTrainerFomoMAE):
    """bf16 autocast, no GradScaler."""
    autocast_dtype = "bfloat16"


class nnUNetTrainerFomoMAE_bf16_channelslast(nnUNetTrainerFomoMAE_bf16):
    """bf16 autocast with weights and batches in the channels-last 3-D layout."""
    channels_last = True
