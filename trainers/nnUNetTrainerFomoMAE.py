"""Masked-autoencoder pretraining inside nnU-Net: `nnUNetv2_train ... -tr nnUNetTrainerFomoMAE`.

The network is the plans' U-Net with one output per input channel; a block mask hides part of
each patch, the network reconstructs the scan, and the loss counts masked voxels inside the
brain only. Masking, loss, augmentation and the schedule are library functions
(fomo_nnunet.ssl, fomo_nnunet.schedules); this class wires them into nnU-Net's training loop.
The recipe is class attributes, so a variant is a subclass that sets a few of them.
"""
from __future__ import annotations

import os
from time import time

import numpy as np
import torch
from torch import distributed as dist
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from fomo_nnunet.schedules import WarmupCosineLR
from fomo_nnunet.training import DistributedRun, SeededRun
from fomo_nnunet.ssl import apply_mask, block_mask, masked_reconstruction_loss
from fomo_nnunet.ssl.augment import PretrainAugmentation, training_transforms, unpack_target, validation_transforms
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.helpers import dummy_context


class nnUNetTrainerFomoMAE(DistributedRun, SeededRun, nnUNetTrainer):
    # masking (nnssl's recipe for a 1 mm, 160^3 patch: 75 % of 16^3 blocks)
    mask_ratio: float = 0.75
    block_size: int = 16
    learned_mask_token: bool = False
    loss_kind: str = "mse"
    # optimisation: AdamW, linear warmup then cosine to zero, gradient clipping
    epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50
    lr: float = 1e-3
    weight_decay_adamw: float = 0.05
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    augmentation: PretrainAugmentation = PretrainAugmentation()
    # checkpoints and pictures
    checkpoint_every: int = 50
    picture_every: int = 10
    # validation masks are the same for every run and epoch, so validation losses compare across seeds;
    # the training mask stream derives from the run's seed (FOMO_SEED)
    val_mask_seed: int = 11234

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.num_iterations_per_epoch = self.iterations_per_epoch
        self.num_val_iterations_per_epoch = self.val_iterations_per_epoch
        self.initial_lr = self.lr
        self.weight_decay = self.weight_decay_adamw
        self.save_every = self.checkpoint_every
        self.enable_deep_supervision = False
        self._mask_generator: torch.Generator | None = None
        self._val_example: dict[str, np.ndarray] | None = None

    # ---- network, optimiser, loss -------------------------------------------------------------
    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        # A reconstruction head: one output per input channel, whatever the dataset's labels say.
        network = get_network_from_plans(configuration_manager.network_arch_class_name,
                                         configuration_manager.network_arch_init_kwargs,
                                         configuration_manager.network_arch_init_kwargs_req_import,
                                         num_input_channels, num_input_channels, allow_init=True,
                                         deep_supervision=False)
        # Without deep supervision only the last output layer is used; the lower-resolution ones never
        # get a gradient, and DDP would wait for theirs forever. They stay in the state dict, frozen.
        for layer in list(getattr(network.decoder, "seg_layers", []))[:-1]:
            layer.requires_grad_(False)
        return network

    def _plain_network(self) -> torch.nn.Module:
        # check the wrapper, not is_ddp: configure_optimizers runs before nnU-Net wraps the network in DDP
        mod = self.network.module if isinstance(self.network, DDP) else self.network
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod

    def configure_optimizers(self):
        if self.learned_mask_token:
            net = self._plain_network()
            if not hasattr(net, "fomo_mask_token"):
                # lives on the network so it is saved, resumed and synchronised with it
                net.register_parameter("fomo_mask_token", torch.nn.Parameter(
                    torch.zeros(self.num_input_channels, device=self.device)))
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay,
                                      betas=(0.9, 0.95))
        warmup = max(1, round(self.warmup_fraction * self.num_epochs)) if self.warmup_fraction > 0 else 0
        return optimizer, WarmupCosineLR(optimizer, self.num_epochs, warmup)

    def _build_loss(self):
        kind = self.loss_kind

        def loss(pred, target, mask, brain):
            return masked_reconstruction_loss(pred, target, mask, brain, kind=kind)

        return loss

    # ---- data --------------------------------------------------------------------------------
    def _mask_channels(self) -> list[int]:
        use = self.configuration_manager.use_mask_for_norm or []
        return [i for i, u in enumerate(use) if u]

    def get_training_transforms(self, patch_size, *args, **kwargs):
        return training_transforms(tuple(patch_size), self.augmentation, self._mask_channels())

    def get_validation_transforms(self, *args, **kwargs):
        return validation_transforms(self._mask_channels())

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, _, mirror_axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

        # the loader's initial crop only needs to cover our (smaller) rotations and scalings
        rot = np.deg2rad(self.augmentation.max_rotation_deg)
        initial = get_patch_size(self.configuration_manager.patch_size, (-rot, rot), (-rot, rot), (-rot, rot),
                                 self.augmentation.scaling)
        return rotation, dummy_2d, initial, mirror_axes

    # ---- steps -------------------------------------------------------------------------------
    def _mask_token(self) -> torch.Tensor | None:
        return getattr(self._plain_network(), "fomo_mask_token", None)

    def _forward_masked(self, batch: dict, generator: torch.Generator):
        data = batch["data"].to(self.device, non_blocking=True)
        brain, clean = unpack_target([t.to(self.device, non_blocking=True) for t in batch["target"]])
        mask = block_mask(tuple(data.shape[2:]), data.shape[0], self.block_size, self.mask_ratio,
                          generator=generator, device=self.device)
        masked = apply_mask(data, mask, self._mask_token())
        with torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            pred = self.network(masked)
            loss = self.loss(pred.float(), clean, mask, brain)
        return loss, (data, masked, pred, clean)

    def train_step(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        loss, _ = self._forward_masked(batch, self._mask_generator)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}

    def on_train_start(self):
        super().on_train_start()
        # a different mask stream per DDP rank, reproducible per run seed
        self._mask_generator = torch.Generator(device=self.device).manual_seed(self.stream_seed("mask"))

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        # the same masks every epoch, so validation losses are comparable across epochs
        self._val_generator = torch.Generator(device=self.device).manual_seed(self.val_mask_seed + self.local_rank)
        self._val_example = None

    def validation_step(self, batch: dict) -> dict:
        loss, (data, masked, pred, clean) = self._forward_masked(batch, self._val_generator)
        if self._val_example is None:
            self._val_example = {"input": data[0, 0].float().cpu().numpy(),
                                 "masked input": masked[0, 0].float().cpu().numpy(),
                                 "reconstruction": pred[0, 0].float().cpu().numpy(),
                                 "target": clean[0, 0].float().cpu().numpy()}
        return {"loss": loss.detach().cpu().numpy()}

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        loss_here = np.mean(collate_outputs(val_outputs)["loss"])
        if self.is_ddp:
            losses = [None] * dist.get_world_size()
            dist.all_gather_object(losses, loss_here)
            loss_here = float(np.mean(losses))
        self.logger.log("val_losses", float(loss_here), self.current_epoch)

    # ---- epoch end: checkpoints, curves, pictures ----------------------------------------------
    def on_epoch_end(self):
        self.logger.log("epoch_end_timestamps", time(), self.current_epoch)
        train_loss = self.logger.get_value("train_losses", step=-1)
        val_loss = self.logger.get_value("val_losses", step=-1)
        self.print_to_log_file("train_loss", np.round(train_loss, 5))
        self.print_to_log_file("val_loss (masked brain voxels)", np.round(val_loss, 5))
        self.print_to_log_file(f"Epoch time: {np.round(self.logger.get_value('epoch_end_timestamps', step=-1) - self.logger.get_value('epoch_start_timestamps', step=-1), decimals=2)} s")

        epoch = self.current_epoch
        if (epoch + 1) % self.save_every == 0 and epoch != self.num_epochs - 1:
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_latest.pth"))
        # nnU-Net checkpoints carry `_best_ema`; for pretraining it holds the best validation loss
        if self._best_ema is None or val_loss < self._best_ema:
            self._best_ema = val_loss
            self.print_to_log_file(f"New best validation reconstruction loss: {np.round(val_loss, 5)}")
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_best.pth"))
        if self.local_rank == 0:
            self._write_pictures(epoch)
        self.current_epoch += 1

    def _write_pictures(self, epoch: int) -> None:
        from fomo_nnunet.plots import plot_curves, plot_reconstruction

        log = self.logger.get_value
        n = min(len(log("train_losses", None)), len(log("val_losses", None)), len(log("lrs", None)))
        plot_curves(os.path.join(self.output_folder, "progress.png"),
                    {"train loss": log("train_losses", None)[:n], "val loss": log("val_losses", None)[:n]},
                    f"{self.__class__.__name__}: masked reconstruction ({self.loss_kind}) on brain voxels",
                    secondary={"learning rate": log("lrs", None)[:n]}, secondary_label="learning rate")
        last = epoch == self.num_epochs - 1
        if self._val_example is not None and ((epoch + 1) % self.picture_every == 0 or last or epoch == 0):
            folder = os.path.join(self.output_folder, "reconstructions")
            os.makedirs(folder, exist_ok=True)
            title = f"epoch {epoch + 1}: mask ratio {self.mask_ratio}, block {self.block_size}"
            plot_reconstruction(os.path.join(folder, f"epoch_{epoch + 1:04d}.png"), self._val_example, title)
            plot_reconstruction(os.path.join(self.output_folder, "reconstruction.png"), self._val_example, title)

    # ---- self-describing checkpoints -----------------------------------------------------------
    def fomo_metadata(self, epochs_completed: int) -> dict:
        from fomo_nnunet import __version__
        from fomo_nnunet.transfer import PretrainMetadata

        cm = self.configuration_manager
        arch = self.plans_manager.plans["configurations"][self.configuration_name].get("architecture") or {}
        return PretrainMetadata(
            network_class=cm.network_arch_class_name,
            network_kwargs=arch.get("arch_kwargs", cm.network_arch_init_kwargs),
            arch_kwargs_requires_import=list(cm.network_arch_init_kwargs_req_import),
            patch_size=[int(p) for p in cm.patch_size],
            spacing=[float(s) for s in cm.spacing],
            normalization=list(cm.normalization_schemes),
            num_input_channels=int(self.num_input_channels),
            channel_meaning=[f"{v}: any single MRI sequence, z-scored per scan over its non-zero region"
                             for v in self.dataset_json["channel_names"].values()],
            objective="mae",
            objective_settings={"mask_ratio": self.mask_ratio, "block_size": self.block_size,
                                "learned_mask_token": self.learned_mask_token, "loss": self.loss_kind,
                                "loss_region": "masked voxels inside the brain mask",
                                "optimizer": "AdamW", "lr": self.initial_lr, "weight_decay": self.weight_decay,
                                "warmup_fraction": self.warmup_fraction, "schedule": "warmup+cosine",
                                "batch_size": int(self.batch_size), "use_mask_for_norm": list(cm.use_mask_for_norm),
                                "seed": int(self.fomo_seed)},
            iterations_trained=int(epochs_completed * self.num_iterations_per_epoch),
            epochs_trained=int(epochs_completed),
            plans_name=self.plans_manager.plans_name,
            dataset_name=self.plans_manager.dataset_name,
            trainer_name=self.__class__.__name__,
            fomo_nnunet_version=__version__,
        ).to_dict()

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        # the keys nnU-Net's own load_checkpoint and predictor read, plus our metadata
        checkpoint = {
            "network_weights": self._plain_network().state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            "fomo_metadata": self.fomo_metadata(self.current_epoch + 1),
        }
        tmp = filename + ".tmp"
        torch.save(checkpoint, tmp)
        os.replace(tmp, filename)

    def perform_actual_validation(self, save_probabilities: bool = False):
        # nnU-Net's validation segments the validation cases; a reconstruction model has nothing to
        # segment. Its validation is the held-out reconstruction loss logged every epoch.
        self.print_to_log_file("MAE pretraining: validation is the reconstruction loss on held-out scans "
                               "(progress.png, reconstruction.png); no segmentation validation to run.")


# ---- variants: a subclass changes a few attributes ----------------------------------------------
class nnUNetTrainerFomoMAE_tiny(nnUNetTrainerFomoMAE):
    """CPU-sized run for the demo: 4 mm data, 32^3 patches, a few minutes on two cores."""
    block_size = 4
    epochs = 20
    iterations_per_epoch = 25
    val_iterations_per_epoch = 5
    lr = 3e-3
    checkpoint_every = 5
    picture_every = 5


class nnUNetTrainerFomoMAE_tiny_80epochs(nnUNetTrainerFomoMAE_tiny):
    """Four times the tiny pretraining (2000 steps): do longer-pretrained features probe better?"""
    epochs = 80
    checkpoint_every = 10
    picture_every = 20


class nnUNetTrainerFomoMAE_tiny_smoke(nnUNetTrainerFomoMAE_tiny):
    """A few iterations, for tests."""
    epochs = 3
    iterations_per_epoch = 4
    val_iterations_per_epoch = 2
    checkpoint_every = 1
    picture_every = 1


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
