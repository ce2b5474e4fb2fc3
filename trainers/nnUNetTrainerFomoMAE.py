"""Masked-autoencoder pretraining inside nnU-Net: `nnUNetv2_train ... -tr nnUNetTrainerFomoMAE`.

The network is the plans' U-Net with one output per input channel; a block mask hides part of
each patch, the network reconstructs the scan, and the loss counts masked voxels inside the
brain only (`loss_region`: "masked_brain"; "masked" or "all" voxels for other recipes, such as AMAES below).
Masking, loss, augmentation and the steps' parts are library functions (fomo_nnunet.ssl); the training
step, schedule, epoch end and self-describing checkpoints come from the trainer toolkit
(fomo_nnunet.training). The recipe is data (fomo_nnunet.ssl.recipe.PretrainRecipe with its MAEObjective): a
variant is a subclass with one line, `recipe = ...`; this class holds the methods that make it masked
reconstruction, and the step's speed settings (autocast_dtype, compile_network, channels_last).

Objectives that shape the deep stages (what pooling heads and embeddings read): `decoder_skips`
"none" or "drop" keeps the encoder skips from the decoder during pretraining (fomo_nnunet.ssl.skips),
and `vicreg_weight` > 0 adds VICReg on the pooled bottleneck of two masked views of each batch
(fomo_nnunet.ssl.losses.vicreg_loss): two masks of each patch (`vicreg_pairs = "views"`), or each case
and a partner from its imaging session, another sequence with probability `session_p_other`
(`"sessions"`, fomo_nnunet.ssl.sessions), on the bottleneck or on several encoder stages' pools
concatenated (`vicreg_stages`); `mae_weight` weighs the reconstruction term (0: VICReg alone). Both act
through a forward pre-hook on the decoder; the network and its state dict are unchanged, so downstream
loading is too.
"""
from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np
import torch
from nnunetv2.utilities.collate_outputs import collate_outputs

from fomo_nnunet.ssl import LOSS_REGIONS, SkipGate, masked_reconstruction_loss
from fomo_nnunet.ssl.augment import unpack_target
from fomo_nnunet.ssl.pretraining import (PretrainingData, attach_skip_gate, epoch_lines, masked_views, mean_of_halves,
                                         picture_example, pretrain_optimizer, reconstruction_network, two_view_inputs,
                                         two_view_loss, vicreg_epoch_means, vicreg_floor_line,
                                         write_reconstruction_pictures)
from fomo_nnunet.ssl.recipe import (AMAES, LONG_TINY_BUDGET, MAE, SMOKE_BUDGET, TINY_AMAES, TINY_EXPANDER,
                                    TINY_EXPANDER_NARROW, TINY_MAE, TINY_VICREG_STAGES, VICREG_LOG_KEYS, VICREG_WEIGHT,
                                    PretrainRecipe, objective_settings, with_objective)
from fomo_nnunet.training import AmpStep, DescribedCheckpoints, EpochEnd, FomoTrainer, unwrap
from fomo_nnunet.training.fast import StepSettings


class nnUNetTrainerFomoMAE(StepSettings, PretrainingData, AmpStep, EpochEnd, DescribedCheckpoints, FomoTrainer):
    recipe: PretrainRecipe = MAE  # fomo_nnunet.ssl.recipe: budget, optimiser, augmentation, objective
    # speed: StepSettings' autocast_dtype, compile_network, channels_last (nnU-Net's defaults)
    best_is_lowest = True  # checkpoint_best: the lowest validation loss
    # validation masks (and skip drops): the same for every run and epoch (losses compare); training masks and
    # skip drops derive from FOMO_SEED
    val_mask_seed: int = 11234
    val_skip_seed: int = 21234
    grad_clip = property(lambda self: self.recipe.grad_clip)  # AmpStep's clipping norm
    embedding_pooling = property(lambda self: self.recipe.embedding_pooling)  # DescribedCheckpoints records it
    objective = property(lambda self: self.recipe.objective.name)  # the objective's name in checkpoints

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self._mask_generator = self._skip_generator = None
        self._val_example: dict[str, np.ndarray] | None = None
        self._skip_gate: SkipGate | None = None
        self._step_terms: dict[str, torch.Tensor] = {}  # the last two-view step's losses, for train_step
        if self.recipe.objective.vicreg_weight > 0:
            self.logger.local_logger.my_fantastic_logging.update({key: [] for key in VICREG_LOG_KEYS})

    def initialize(self):
        super().initialize()
        if self._skip_gate is None:
            self._skip_gate = attach_skip_gate(self.network, self.recipe.objective, self.batch_size)
            if floor := vicreg_floor_line(self.network, self.recipe.objective, self.batch_size):
                self.print_to_log_file(floor)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        return reconstruction_network(configuration_manager, num_input_channels)

    def configure_optimizers(self):  # before nnU-Net wraps the network in DDP
        return pretrain_optimizer(self.network, self.recipe, self.num_input_channels, self.device, self.initial_lr,
                                  self.weight_decay, self.num_epochs)

    def _build_loss(self):  # (pred, target, mask, brain)
        o = self.recipe.objective
        return partial(masked_reconstruction_loss, kind=o.loss_kind, region=o.loss_region)

    # ---- steps -------------------------------------------------------------------------------
    def _on_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        data = batch["data"].to(self.device, non_blocking=True)
        brain, clean = unpack_target([t.to(self.device, non_blocking=True) for t in batch["target"]])
        return data, brain, clean

    def _forward_masked(self, data, brain, clean, generator: torch.Generator):
        mask, masked = masked_views(data, self.recipe.objective, generator,
                                    getattr(unwrap(self.network), "fomo_mask_token", None))
        with self.autocast():
            pred = self.network(masked)
            loss = self.loss(pred.float(), clean, mask, brain)
        return loss, (data, masked, pred, clean, mask)

    def training_loss(self, batch: dict) -> torch.Tensor:
        o = self.recipe.objective
        if not o.vicreg_weight > 0:
            return self._forward_masked(*self._on_device(batch), self._mask_generator)[0]
        # two masked views in one forward (one DDP forward per step)
        data, brain, clean = two_view_inputs(*self._on_device(batch), o.vicreg_pairs)
        mask, masked = masked_views(data, o, self._mask_generator, getattr(unwrap(self.network), "fomo_mask_token", None))
        with self.autocast():
            pred = self.network(masked).float()
            reconstruction = mean_of_halves(self.loss, pred, clean, mask, brain)
        gate = self._skip_gate
        total, self._step_terms = two_view_loss(reconstruction, gate.take_pooled(), o, gate.features)
        return total

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        if self.recipe.objective.vicreg_weight > 0:  # "loss" (train_losses) stays the reconstruction loss
            out.update({k: v.detach().cpu().numpy() for k, v in self._step_terms.items()})
        return out

    def on_train_epoch_end(self, train_outputs: list[dict]):
        if self.recipe.objective.vicreg_weight > 0:
            for key, value in vicreg_epoch_means(train_outputs, self.from_all_ranks).items():
                self.logger.log(key, value, self.current_epoch)
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
            self._skip_gate.generator = self._skip_generator
            self._skip_gate.capture = self.recipe.objective.vicreg_weight > 0

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
        loss, (data, masked, pred, clean, mask) = self._forward_masked(*self._on_device(batch), self._val_generator)
        if self._val_example is None:  # the first case of the epoch, for the pictures
            self._val_example = picture_example(**{"input": data, "masked input": masked, "reconstruction": pred,
                                                   "target": clean, "mask": mask})
        return {"loss": loss.detach().cpu().numpy()}

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        loss = np.mean(self.from_all_ranks(np.mean(collate_outputs(val_outputs)["loss"])))
        self.logger.log("val_losses", float(loss), self.current_epoch)

    # ---- epoch end (fomo_nnunet.training.EpochEnd), checkpoints (DescribedCheckpoints) -----------
    def epoch_lines(self) -> list[tuple]:
        return epoch_lines(self.logger.get_value, self.recipe.objective)

    def selection(self) -> tuple[float, str]:
        val_loss = self.logger.get_value("val_losses", -1)
        return val_loss, f"New best validation reconstruction loss: {np.round(val_loss, 5)}"

    def write_pictures(self, epoch: int) -> None:
        o = self.recipe.objective
        self.plot_losses(f"{self.__class__.__name__}: reconstruction ({o.loss_kind}) on "
                         f"{LOSS_REGIONS[o.loss_region]}", {"learning rate": "lrs"}, "learning rate")
        write_reconstruction_pictures(self.output_folder, epoch, self.num_epochs, self._val_example, self.recipe)

    def objective_settings(self) -> dict:
        return objective_settings(self.recipe, self.autocast_dtype, self.logger.local_logger.my_fantastic_logging)

    def on_train_end(self):
        # before nnU-Net's on_train_end writes checkpoint_final (and deletes checkpoint_latest), so that
        # its fomo_metadata carries them; checkpoint_best was written earlier, with other weights, without
        self.embedding_stats = self.corpus_embedding_stats(self.recipe.embedding_stats_cases)
        super().on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False):  # nothing to segment
        self.print_to_log_file("MAE pretraining: validation is the reconstruction loss on held-out scans "
                               "(progress.png, reconstruction.png); no segmentation validation to run.")


# ---- variants: one recipe each (fomo_nnunet.ssl.recipe) --------------------------------------------------
class nnUNetTrainerFomoMAE_tiny(nnUNetTrainerFomoMAE):
    """CPU-sized run for the demo: 4 mm data, 32^3 patches, a few minutes on two cores."""
    recipe = TINY_MAE


class nnUNetTrainerFomoMAE_tiny_80epochs(nnUNetTrainerFomoMAE):
    """Four times the tiny pretraining (2000 steps): do longer-pretrained features probe better?"""
    recipe = replace(TINY_MAE, **LONG_TINY_BUDGET)


class nnUNetTrainerFomoMAE_tiny_smoke(nnUNetTrainerFomoMAE):
    """A few iterations, for tests."""
    recipe = replace(TINY_MAE, **SMOKE_BUDGET)


class nnUNetTrainerFomoMAE_ratio60(nnUNetTrainerFomoMAE):
    """The FOMO26 organisers' / AMAES ratio."""
    recipe = with_objective(MAE, mask_ratio=0.6)


class nnUNetTrainerFomoMAE_ratio90(nnUNetTrainerFomoMAE):
    recipe = with_objective(MAE, mask_ratio=0.9)


class nnUNetTrainerFomoMAE_block8(nnUNetTrainerFomoMAE):
    recipe = with_objective(MAE, block_size=8)


class nnUNetTrainerFomoMAE_block4(nnUNetTrainerFomoMAE):
    recipe = with_objective(MAE, block_size=4)


class nnUNetTrainerFomoMAE_token(nnUNetTrainerFomoMAE):
    """Masked voxels replaced by a learned token instead of zero."""
    recipe = with_objective(MAE, learned_mask_token=True)


class nnUNetTrainerFomoMAE_250epochs(nnUNetTrainerFomoMAE):
    recipe = replace(MAE, num_epochs=250)


class nnUNetTrainerFomoMAE_500epochs(nnUNetTrainerFomoMAE):
    recipe = replace(MAE, num_epochs=500)


class nnUNetTrainerFomoMAE_2000epochs(nnUNetTrainerFomoMAE):
    recipe = replace(MAE, num_epochs=2000)


# ---- objectives that shape the deep stages (what pooling heads and embeddings read) --------------
class nnUNetTrainerFomoMAE_noskip(nnUNetTrainerFomoMAE):
    """Skip connections off in pretraining: the decoder reconstructs from the bottleneck alone (AMAES, Munk et
    al. 2024, arXiv:2408.00640, the FOMO25 baseline; the FOMO26 organisers' ResEnc-B pretraining)."""
    recipe = with_objective(MAE, decoder_skips="none")


class nnUNetTrainerFomoMAE_skipdrop(nnUNetTrainerFomoMAE):
    """Each skip of each sample zeroed with probability `skip_drop_p` (0.5): skips help, but cannot be relied on."""
    recipe = with_objective(MAE, decoder_skips="drop")


class nnUNetTrainerFomoMAE_vicreg(nnUNetTrainerFomoMAE):
    """MAE + VICReg (Bardes, Ponce & LeCun, ICLR 2022) on the pooled bottleneck of two masked views; skips on
    (VICREG_WEIGHT: why 0.01)."""
    recipe = with_objective(MAE, vicreg_weight=VICREG_WEIGHT)


class nnUNetTrainerFomoMAE_noskip_vicreg(nnUNetTrainerFomoMAE):
    """MAE without skips (AMAES) + VICReg on the pooled bottleneck of two masked views."""
    recipe = with_objective(MAE, decoder_skips="none", vicreg_weight=VICREG_WEIGHT)


class nnUNetTrainerFomoMAE_noskip_vicreg_sessions(nnUNetTrainerFomoMAE):
    """MAE without skips + VICReg between each case and a partner from its imaging session (subjects.json):
    another sequence half of the time, else a second crop of the case (the FOMO25 method-track winner's
    positives were sequences of one session)."""
    recipe = with_objective(MAE, decoder_skips="none", vicreg_weight=VICREG_WEIGHT, vicreg_pairs="sessions")


class nnUNetTrainerFomoMAE_tiny_noskip(nnUNetTrainerFomoMAE):
    """The tiny run without skips in pretraining."""
    recipe = with_objective(TINY_MAE, decoder_skips="none")


class nnUNetTrainerFomoMAE_tiny_skipdrop(nnUNetTrainerFomoMAE):
    """The tiny run with skips dropped at random."""
    recipe = with_objective(TINY_MAE, decoder_skips="drop")


class nnUNetTrainerFomoMAE_tiny_vicreg(nnUNetTrainerFomoMAE):
    """The tiny run with the VICReg term."""
    recipe = with_objective(TINY_MAE, vicreg_weight=VICREG_WEIGHT)


class nnUNetTrainerFomoMAE_tiny_noskip_vicreg(nnUNetTrainerFomoMAE):
    """The tiny run without skips, with the VICReg term."""
    recipe = with_objective(TINY_MAE, decoder_skips="none", vicreg_weight=VICREG_WEIGHT)


class nnUNetTrainerFomoMAE_tiny_noskip_vicreg_smoke(nnUNetTrainerFomoMAE):
    """A few iterations, for tests."""
    recipe = replace(nnUNetTrainerFomoMAE_tiny_noskip_vicreg.recipe, **SMOKE_BUDGET)


class nnUNetTrainerFomoMAE_tiny_noskip_vicreg_sessions(nnUNetTrainerFomoMAE):
    """The tiny run without skips, with the VICReg term between session partners."""
    recipe = with_objective(TINY_MAE, decoder_skips="none", vicreg_weight=VICREG_WEIGHT, vicreg_pairs="sessions")


class nnUNetTrainerFomoMAE_tiny_noskip_vicreg_sessions_smoke(nnUNetTrainerFomoMAE):
    """A few iterations, for tests."""
    recipe = replace(nnUNetTrainerFomoMAE_tiny_noskip_vicreg_sessions.recipe, **SMOKE_BUDGET)


# ---- the VICReg weight sweep: every encoder stage pooled, session pairs, no skips (TINY_VICREG_STAGES) ------
class nnUNetTrainerFomoMAE_tiny_vicreg_w0p01_stages(nnUNetTrainerFomoMAE):
    recipe = TINY_VICREG_STAGES


class nnUNetTrainerFomoMAE_tiny_vicreg_w0p1_stages(nnUNetTrainerFomoMAE):
    recipe = with_objective(TINY_VICREG_STAGES, vicreg_weight=0.1)


class nnUNetTrainerFomoMAE_tiny_vicreg_w1_stages(nnUNetTrainerFomoMAE):
    recipe = with_objective(TINY_VICREG_STAGES, vicreg_weight=1.0)


class nnUNetTrainerFomoMAE_tiny_vicreg_alone_stages(nnUNetTrainerFomoMAE):
    """The joint-embedding objective alone: no reconstruction term (mae_weight 0)."""
    recipe = with_objective(TINY_VICREG_STAGES, vicreg_weight=1.0, mae_weight=0.0)


class nnUNetTrainerFomoMAE_tiny_vicreg_w0p01_stages_expander(nnUNetTrainerFomoMAE):
    """With VICReg's expander (TINY_EXPANDER) between the pools and the loss, as the paper trains it."""
    recipe = with_objective(TINY_VICREG_STAGES, vicreg_expander=TINY_EXPANDER)


class nnUNetTrainerFomoMAE_tiny_vicreg_w0p1_stages_expander(nnUNetTrainerFomoMAE):
    recipe = with_objective(TINY_VICREG_STAGES, vicreg_weight=0.1, vicreg_expander=TINY_EXPANDER)


class nnUNetTrainerFomoMAE_tiny_vicreg_w1_stages_expander(nnUNetTrainerFomoMAE):
    recipe = with_objective(TINY_VICREG_STAGES, vicreg_weight=1.0, vicreg_expander=TINY_EXPANDER)


class nnUNetTrainerFomoMAE_tiny_vicreg_alone_stages_expander(nnUNetTrainerFomoMAE):
    """VICReg alone with its expander: the paper's objective on every stage's pool."""
    recipe = with_objective(TINY_VICREG_STAGES, vicreg_weight=1.0, mae_weight=0.0, vicreg_expander=TINY_EXPANDER)


class nnUNetTrainerFomoMAE_tiny_vicreg_w0p1_stages_expander128(nnUNetTrainerFomoMAE):
    """With the narrow expander (TINY_EXPANDER_NARROW), for a pretraining batch of 16 (the plans' batch_size)."""
    recipe = with_objective(TINY_VICREG_STAGES, vicreg_weight=0.1, vicreg_expander=TINY_EXPANDER_NARROW)


class nnUNetTrainerFomoMAE_tiny_vicreg_w1_stages_expander128(nnUNetTrainerFomoMAE):
    recipe = with_objective(TINY_VICREG_STAGES, vicreg_weight=1.0, vicreg_expander=TINY_EXPANDER_NARROW)


class nnUNetTrainerFomoMAE_tiny_vicreg_alone_stages_expander128(nnUNetTrainerFomoMAE):
    recipe = with_objective(TINY_VICREG_STAGES, vicreg_weight=1.0, mae_weight=0.0, vicreg_expander=TINY_EXPANDER_NARROW)


class nnUNetTrainerFomoMAE_tiny_vicreg_alone_stages_expander_smoke(nnUNetTrainerFomoMAE):
    """A few iterations of VICReg alone on every stage with a small expander, two masked views (no session list
    needed), for tests."""
    recipe = replace(with_objective(TINY_VICREG_STAGES, vicreg_weight=1.0, mae_weight=0.0, vicreg_pairs="views",
                                    vicreg_expander=(16, 8)), **SMOKE_BUDGET)


class nnUNetTrainerFomoMAE_tiny_block2_ratio60(nnUNetTrainerFomoMAE):
    """AMAES' masking scaled to the tiny patch: 4^3-voxel blocks at ratio 0.6 on a 160^3 patch are 2^3 on 32^3."""
    recipe = with_objective(TINY_MAE, block_size=2, mask_ratio=0.6)


# ---- the FOMO26 organisers' recipe: AMAES (fomo_nnunet.ssl.recipe.AMAES: each setting and its source) ------
class nnUNetTrainerFomoMAE_amaes(nnUNetTrainerFomoMAE):
    """The FOMO26 organisers' AMAES recipe with our full budget (1000 x 250 steps), bf16 as AMAES trains."""
    recipe = AMAES
    autocast_dtype = "bfloat16"


class nnUNetTrainerFomoMAE_tiny_amaes(nnUNetTrainerFomoMAE):
    """AMAES on the tiny budget (as nnUNetTrainerFomoMAE_tiny: 20 x 25 steps), with AMAES' settings (TINY_AMAES).
    One difference: float32 instead of bf16 (nnU-Net's choice on a CPU), as the tiny budget runs on CPUs, where
    bf16 autocast is slow."""
    recipe = TINY_AMAES


class nnUNetTrainerFomoMAE_tiny_amaes_smoke(nnUNetTrainerFomoMAE):
    """A few iterations of nnUNetTrainerFomoMAE_tiny_amaes, for tests."""
    recipe = replace(TINY_AMAES, **SMOKE_BUDGET)


# ---- speed settings (docs/gpu.md: `fomo-nnunet bench campaign` times them against nnU-Net's trainer) -------
class nnUNetTrainerFomoMAE_eager(nnUNetTrainerFomoMAE):
    """Never compiled (nnU-Net's eager fp16 step)."""
    compile_network = False


class nnUNetTrainerFomoMAE_bf16(nnUNetTrainerFomoMAE):
    """bf16 autocast, no GradScaler."""
    autocast_dtype = "bfloat16"


class nnUNetTrainerFomoMAE_bf16_channelslast(nnUNetTrainerFomoMAE):
    """bf16 autocast with weights and batches in the channels-last 3-D layout."""
    autocast_dtype = "bfloat16"
    channels_last = True
