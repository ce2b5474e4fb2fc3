"""Checkpoints that say what they are: nnU-Net's checkpoint plus `fomo_metadata` (fomo_nnunet.transfer).

nnUNetTrainer.save_checkpoint writes the keys its `load_checkpoint` and predictor read. A pretraining
checkpoint must also tell a later finetuning how to rebuild the network and feed it, without the
plans at hand: `DescribedCheckpoints` adds `PretrainMetadata` (network class and arguments, patch,
spacing, normalisation, channels, the objective and its settings, how long it trained) and writes the
file atomically, so that a run killed mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os

import torch

from fomo_nnunet import __version__
from fomo_nnunet.transfer import METADATA_KEY, PretrainMetadata, unwrap


class DescribedCheckpoints:
    """Mixin: checkpoints with `fomo_metadata`; the trainer names its `objective` and `objective_settings()`."""

    objective: str = ""
    channel_meaning: str = "any single MRI sequence, z-scored per scan over its non-zero region"

    def objective_settings(self) -> dict:
        """How the objective was trained (masking, loss, optimiser, schedule ...), as JSON values."""
        raise NotImplementedError

    def fomo_metadata(self, epochs_completed: int) -> dict:
        cm = self.configuration_manager
        arch = self.plans_manager.plans["configurations"][self.configuration_name].get("architecture") or {}
        settings = {**self.objective_settings(), "batch_size": int(self.batch_size),
                    "use_mask_for_norm": list(cm.use_mask_for_norm), "seed": int(self.fomo_seed)}
        return PretrainMetadata(
            network_class=cm.network_arch_class_name,
            network_kwargs=arch.get("arch_kwargs", cm.network_arch_init_kwargs),
            arch_kwargs_requires_import=list(cm.network_arch_init_kwargs_req_import),
            patch_size=[int(p) for p in cm.patch_size],
            spacing=[float(s) for s in cm.spacing],
            normalization=list(cm.normalization_schemes),
            num_input_channels=int(self.num_input_channels),
            channel_meaning=[f"{v}: {self.channel_meaning}" for v in self.dataset_json["channel_names"].values()],
            objective=self.objective,
            objective_settings=settings,
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
        checkpoint = {  # the keys of nnU-Net's checkpoint, then ours
            "network_weights": unwrap(self.network).state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            METADATA_KEY: self.fomo_metadata(self.current_epoch + 1),
        }
        tmp = filename + ".tmp"
        torch.save(checkpoint, tmp)
        os.replace(tmp, filename)
