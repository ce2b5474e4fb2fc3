"""Rebuilding a trained model's network for prediction without looking its trainer class up.

nnU-Net finds a trainer class by name by importing every trainer module it ships
(`recursive_find_trainer_class_by_name`), which takes seconds in every new process, only to call the
class's `build_network_architecture`. A bundle therefore records in each slim checkpoint how the
network is built (`fomo_network`): `{"builder": "plans"}` for trainers that build nnU-Net's network
from the plans (the segmentation trainers), `{"builder": "image_level", head settings}` for the
classification and regression trainers. Prediction builds from that record and the plans; a
checkpoint without one falls back to the trainer class (this package's trainers first, then
nnU-Net's search).
"""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import pkgutil
from typing import Any, Mapping

from fomo_nnunet.paths import TRAINERS_PACKAGE, trainers_dir

NETWORK_KEY = "fomo_network"
PLANS = "plans"
IMAGE_LEVEL = "image_level"
# a trainer class that defines build_network_architecture declares which of the builders above it calls
BUILDER_ATTRIBUTE = "fomo_network_builder"


def build_plans_network(configuration_manager, num_input_channels: int, num_outputs: int,
                        deep_supervision: bool = False, initialize: bool = True):
    """nnU-Net's network of the plans (what nnUNetTrainer.build_network_architecture builds, with its 3-D
    convolutions on oneDNN on a CPU: fomo_nnunet.models.cpu_convolution). `initialize`
    False skips nnU-Net's He initialisation (seconds for a 100M-parameter U-Net on a CPU), for a network
    whose weights are loaded next."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from fomo_nnunet.models.cpu_convolution import for_this_machine

    cm = configuration_manager
    network = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                     cm.network_arch_init_kwargs_req_import, num_input_channels, num_outputs,
                                     allow_init=initialize, deep_supervision=deep_supervision)
    return for_this_machine(network)  # oneDNN's kernels and layout on a CPU (fomo_nnunet.models.cpu_convolution)


def build_image_level_network(plans: Mapping, configuration_manager, num_input_channels: int,
                              head_stages, head_hidden: int, head_dropout: float, head_pooling: str = "avg",
                              initialize: bool = True):
    """The plans' U-Net encoder with a pooling head for the plans' task (classification or regression)."""
    import torch

    from fomo_nnunet.models.heads import EncoderClassifier, PoolingHead, encoder_stage_widths
    from fomo_nnunet.image_level import image_level_outputs, task_from_plans
    from fomo_nnunet.tasks import CLASSIFICATION

    task = task_from_plans(plans)
    unet = build_plans_network(configuration_manager, num_input_channels, 2, initialize=initialize)
    head = PoolingHead(encoder_stage_widths(unet.encoder), image_level_outputs(task), tuple(head_stages),
                       head_hidden, head_dropout, head_pooling)
    network = EncoderClassifier(unet.encoder, head)
    if task.kind != CLASSIFICATION:
        # mean and std of the training targets: saved with the weights, so predictions map back to years
        network.register_buffer("fomo_target_stats", torch.tensor([0.0, 1.0]))
    return network


def network_record(trainer_class) -> dict[str, Any] | None:
    """How `trainer_class` builds its network, as plain data; None when only the class itself knows."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    owner = next(c for c in trainer_class.__mro__ if "build_network_architecture" in vars(c))
    # a class that builds its own network names its builder beside the method (BUILDER_ATTRIBUTE), so a
    # subclass that overrides the method without naming one is "only the class itself knows"
    builder = PLANS if owner is nnUNetTrainer else vars(owner).get(BUILDER_ATTRIBUTE)
    if builder == PLANS:
        return {"builder": PLANS}
    if builder == IMAGE_LEVEL:
        head = trainer_class.recipe.head  # fomo_nnunet.training.recipes.HeadSpec
        return {"builder": IMAGE_LEVEL, "head_stages": [int(s) for s in head.stages], "head_hidden": int(head.hidden),
                "head_dropout": float(head.dropout), "head_pooling": str(head.pooling)}
    return None


def build_from_record(record: Mapping, plans_manager, configuration_manager, num_input_channels: int,
                      num_outputs: int):
    """The network of a checkpoint's record, uninitialised: its weights are loaded next."""
    builder = record.get("builder")
    if builder == PLANS:
        return build_plans_network(configuration_manager, num_input_channels, num_outputs, initialize=False)
    if builder == IMAGE_LEVEL:
        return build_image_level_network(plans_manager.plans, configuration_manager, num_input_channels,
                                         record["head_stages"], record["head_hidden"], record["head_dropout"],
                                         record.get("head_pooling", "avg"), initialize=False)
    raise ValueError(f"unknown network builder {builder!r} in the checkpoint's {NETWORK_KEY!r} record "
                     f"(known: {PLANS}, {IMAGE_LEVEL})")


def network_for_prediction(checkpoint: Mapping, plans_manager, configuration_manager, num_input_channels: int,
                           num_outputs: int):
    """The untrained network a checkpoint's weights belong to (deep supervision off)."""
    record = checkpoint.get(NETWORK_KEY)
    if record:
        return build_from_record(record, plans_manager, configuration_manager, num_input_channels, num_outputs)
    return trainer_class(checkpoint["trainer_name"]).build_network_architecture(
        plans_manager, configuration_manager, num_input_channels, num_outputs, enable_deep_supervision=False)


# Trainers that existed only to train from scratch, retired when from-scratch became a setting of the plans
# (`fomo-nnunet plan transfer --from-scratch`): their fold folders and checkpoints still name them, and they
# still predict with the trainer they were a variant of (the same network and recipe).
RETIRED_SCRATCH_TRAINERS = {
    "nnUNetTrainerFomoSeg_scratch": "nnUNetTrainerFomoSeg",
    "nnUNetTrainerFomoSeg_tiny_scratch": "nnUNetTrainerFomoSeg_tiny",
    "nnUNetTrainerFomoSeg_tiny_smoke_scratch": "nnUNetTrainerFomoSeg_tiny_smoke",
    "nnUNetTrainerFomoSeg_tiny_long_scratch": "nnUNetTrainerFomoSeg_tiny_long",
    "nnUNetTrainerFomoSeg_100epochs_scratch": "nnUNetTrainerFomoSeg_100epochs",
    "nnUNetTrainerFomoSeg_500epochs_scratch": "nnUNetTrainerFomoSeg_500epochs",
    "nnUNetTrainerFomoCls_scratch": "nnUNetTrainerFomoCls",
    "nnUNetTrainerFomoCls_tiny_scratch": "nnUNetTrainerFomoCls_tiny",
    "nnUNetTrainerFomoCls_tiny_smoke_scratch": "nnUNetTrainerFomoCls_tiny_smoke",
    "nnUNetTrainerFomoCls_tiny_long_scratch": "nnUNetTrainerFomoCls_tiny_long",
    "nnUNetTrainerFomoCls_250epochs_scratch": "nnUNetTrainerFomoCls_250epochs",
    "nnUNetTrainerFomoReg_scratch": "nnUNetTrainerFomoReg",
    "nnUNetTrainerFomoReg_tiny_scratch": "nnUNetTrainerFomoReg_tiny",
    "nnUNetTrainerFomoReg_tiny_smoke_scratch": "nnUNetTrainerFomoReg_tiny_smoke",
    "nnUNetTrainerFomoReg_tiny_long_scratch": "nnUNetTrainerFomoReg_tiny_long",
    "nnUNetTrainerFomoReg_250epochs_scratch": "nnUNetTrainerFomoReg_250epochs",
}


def trainer_class(name: str):
    """The trainer class nnU-Net would use: this package's trainers first (a retired from-scratch trainer's
    name gives the trainer it was a variant of), then nnU-Net's own search."""
    name = RETIRED_SCRATCH_TRAINERS.get(name, name)
    # looked up by name in the trainers folder, as nnU-Net does (a plugin's folder, not an import of it)
    if name.startswith("nnUNetTrainerFomo"):
        for module in pkgutil.iter_modules([str(trainers_dir())]):
            found = getattr(importlib.import_module(f"{TRAINERS_PACKAGE}.{module.name}"), name, None)
            if found is not None:
                return found
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    os.environ.setdefault("nnUNet_extTrainer", str(trainers_dir()))
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search
        return recursive_find_trainer_class_by_name(name)
