"""Study-only variants: why did the pretrained arm lose to scratch on tasks 4 and 5 of the tiny-long benchmark?

One class per hypothesis and task; each changes ONE setting of its tiny-long base (trigeminal segmentation:
nnUNetTrainerFomoSeg_tiny_long; polymicrogyria classification: nnUNetTrainerFomoCls_tiny_long) and is trained
with the base's plans, seeds and data. Scratch is the base trainer on from-scratch plans: every variant below
changes only how the pretrained weights are used. tools/adapt_study.py runs the study; its commands and
figures are in docs/results/adaptation-study.md.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from fomo_nnunet.trainers.nnUNetTrainerFomoImageLevel import nnUNetTrainerFomoCls_tiny_long
from fomo_nnunet.trainers.nnUNetTrainerFomoSeg import nnUNetTrainerFomoSeg_tiny_long

_SEG, _CLS = nnUNetTrainerFomoSeg_tiny_long.recipe, nnUNetTrainerFomoCls_tiny_long.recipe


class FreshNormAffines:
    """Instance-norm scales and shifts keep the values of the freshly built network (as in the scratch arm:
    1 and 0, and 0 for the scale that closes each residual block) while every convolution loads its pretrained
    weights: the feature scaling learnt on the pretraining corpus does not carry over."""

    def configure_optimizers(self):
        norms = [m for m in self.network.modules() if isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.affine]
        fresh = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in norms]
        optimizer_and_scheduler = super().configure_optimizers()  # loads the pretrained weights
        if self.loads_pretrained and not self._resuming:
            with torch.no_grad():
                for m, (weight, bias) in zip(norms, fresh):
                    m.weight.copy_(weight)
                    m.bias.copy_(bias)
            self.print_to_log_file(f"instance-norm affines of {len(norms)} layers kept at their initial values")
        return optimizer_and_scheduler


# ---- (a) the frozen-encoder start: pretrained tensors at lr 0 first -----------------------------------
class nnUNetTrainerFomoSeg_tiny_long_nofreeze(nnUNetTrainerFomoSeg_tiny_long):
    """(a) No fresh-only epoch: pretrained and fresh tensors share the schedule from the first step."""
    recipe = replace(_SEG, fresh_only_epochs=0)


class nnUNetTrainerFomoCls_tiny_long_nofreeze(nnUNetTrainerFomoCls_tiny_long):
    """(a) No fresh-only epoch: pretrained and fresh tensors share the schedule from the first step."""
    recipe = replace(_CLS, fresh_only_epochs=0)


# ---- (b) the encoder's learning-rate scale ---------------------------------------------------------
class nnUNetTrainerFomoSeg_tiny_long_enclr01(nnUNetTrainerFomoSeg_tiny_long):
    """(b) Pretrained tensors learn at 0.1 x the fresh learning rate (the base: 1 x)."""
    recipe = replace(_SEG, pretrained_lr_scale=0.1)


class nnUNetTrainerFomoCls_tiny_long_enclr01(nnUNetTrainerFomoCls_tiny_long):
    """(b) Pretrained tensors learn at 0.1 x the fresh learning rate (the base: 1 x)."""
    recipe = replace(_CLS, pretrained_lr_scale=0.1)


# ---- (c) normalisation statistics: the pretrained instance-norm affines ------------------------------
class nnUNetTrainerFomoSeg_tiny_long_freshnorm(FreshNormAffines, nnUNetTrainerFomoSeg_tiny_long):
    """(c) Instance-norm scales and shifts at their initial values; convolutions pretrained."""


class nnUNetTrainerFomoCls_tiny_long_freshnorm(FreshNormAffines, nnUNetTrainerFomoCls_tiny_long):
    """(c) Instance-norm scales and shifts at their initial values; convolutions pretrained."""


# ---- (d) the decoder (segmentation) ----------------------------------------------------------------
class nnUNetTrainerFomoSeg_tiny_long_decoder(nnUNetTrainerFomoSeg_tiny_long):
    """(d) The MAE decoder loaded too (the base loads the encoder only)."""
    recipe = replace(_SEG, load_decoder=True)


# ---- (e) the head's pooling (classification) --------------------------------------------------------
class nnUNetTrainerFomoCls_tiny_long_avgpool(nnUNetTrainerFomoCls_tiny_long):
    """(e) The head pools by average only (the base: average and maximum of its stages)."""
    recipe = replace(_CLS, head=replace(_CLS.head, pooling="avg"))
