"""Few-shot segmentation from the pretrained checkpoint: `nnUNetv2_train ... -tr nnUNetTrainerFomoSeg -p fomoPlans`.

The plans written by `fomo-nnunet plan transfer` carry the pretrained network and the link to
its checkpoint; this trainer loads it (encoder always, decoder where shapes match, output layers
fresh, stem adapted to the task's channels) and trains with nnU-Net's segmentation loss, deep
supervision and augmentation under the few-shot recipe of fomo_nnunet.finetune. Prediction is
nnU-Net's own (`nnUNetv2_predict -tr nnUNetTrainerFomoSeg -p fomoPlans`).
"""
from __future__ import annotations

import torch

from fomo_nnunet.finetune import FinetuneRecipe, SmokeBudget, TinyBudget
from fomo_nnunet.training import DistributedRun, SeededRun
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerFomoSeg(DistributedRun, SeededRun, FinetuneRecipe, nnUNetTrainer):
    # nnU-Net validates fold 'all' on its own training cases: a sliding window over every training
    # case that says nothing about generalisation (about 30 s per tiny run on a CPU). False skips it.
    validate_fold_all: bool = True
    # share of each batch forced to contain foreground (nnU-Net: 0.33)
    oversample_foreground: float = 0.33

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.oversample_foreground_percent = self.oversample_foreground

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.fold == "all" and not self.validate_fold_all:
            self.print_to_log_file("fold 'all' trains on every case, so its validation cases are training cases: "
                                   "final validation skipped (validate_fold_all = False)")
            return
        return super().perform_actual_validation(save_probabilities)


class nnUNetTrainerFomoSeg_scratch(nnUNetTrainerFomoSeg):
    """Identical recipe, random initialisation: the comparison that matters."""
    use_pretrained = False


class nnUNetTrainerFomoSeg_nodecoder(nnUNetTrainerFomoSeg):
    """Load the encoder only; the decoder starts fresh like the output layers."""
    load_decoder = False


class TinySegmentation(TinyBudget):
    """The demo's segmentation recipe for tiny-preset plans: 180 steps, a few minutes on 2 cores.

    The recipe (fomo_nnunet.finetune.TinyBudget): AdamW 3e-3, one fresh-only and one warmup epoch. Every
    batch holds foreground (a few-shot task's structures are small: with nnU-Net's 33 % the meningioma
    stayed background for 900 SGD steps in one of two runs). No mirroring at inference: on a CPU it
    multiplies prediction time by eight. Place before the trainer."""
    epochs = 12
    oversample_foreground = 1.0
    test_time_mirroring = False
    validate_fold_all = False
    progress_plot_every = 5


class nnUNetTrainerFomoSeg_tiny(TinySegmentation, nnUNetTrainerFomoSeg):
    """CPU-sized budget for the demo and tests (pair with tiny-preset plans): 180 steps, a few minutes on 2 cores."""


class nnUNetTrainerFomoSeg_tiny_scratch(nnUNetTrainerFomoSeg_tiny):
    use_pretrained = False


class nnUNetTrainerFomoSeg_tiny_smoke(SmokeBudget, nnUNetTrainerFomoSeg_tiny):
    """A few iterations, for tests."""


class nnUNetTrainerFomoSeg_tiny_smoke_scratch(nnUNetTrainerFomoSeg_tiny_smoke):
    use_pretrained = False


class nnUNetTrainerFomoSeg_tiny_long(nnUNetTrainerFomoSeg_tiny):
    """Three times the tiny budget (540 steps): the tiny-long benchmark."""
    epochs = 36


class nnUNetTrainerFomoSeg_tiny_long_scratch(nnUNetTrainerFomoSeg_tiny_long):
    use_pretrained = False


class nnUNetTrainerFomoSeg_100epochs(nnUNetTrainerFomoSeg):
    epochs = 100


class nnUNetTrainerFomoSeg_100epochs_scratch(nnUNetTrainerFomoSeg_100epochs):
    use_pretrained = False


class nnUNetTrainerFomoSeg_500epochs(nnUNetTrainerFomoSeg):
    epochs = 500


class nnUNetTrainerFomoSeg_500epochs_scratch(nnUNetTrainerFomoSeg_500epochs):
    use_pretrained = False
