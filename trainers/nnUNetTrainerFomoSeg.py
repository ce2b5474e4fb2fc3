"""Few-shot segmentation from the pretrained checkpoint: `nnUNetv2_train ... -tr nnUNetTrainerFomoSeg -p fomoPlans`.

The plans written by `fomo-nnunet plan transfer` carry the pretrained network and the link to
its checkpoint; this trainer loads it (encoder always, decoder where shapes match, output layers
fresh, stem adapted to the task's channels) and trains with nnU-Net's segmentation loss, deep
supervision and augmentation under the few-shot recipe of fomo_nnunet.finetune. Prediction is
nnU-Net's own (`nnUNetv2_predict -tr nnUNetTrainerFomoSeg -p fomoPlans`).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from fomo_nnunet.class_weights import label_voxel_counts, sqrt_inverse_frequency
from fomo_nnunet.finetune import Finetuning
from fomo_nnunet.models.network_record import PLANS, build_plans_network
from fomo_nnunet.tasks import SEGMENTATION
from fomo_nnunet.trainer_checks import check_trainer_fits_task
from fomo_nnunet.training import FomoTrainer
from fomo_nnunet.training.recipes import SEG, SMOKE_FINETUNING, TINY_SEG, SegRecipe
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss


class nnUNetTrainerFomoSeg(Finetuning, FomoTrainer):
    recipe: SegRecipe = SEG  # fomo_nnunet.training.recipes.SegRecipe: budget, schedule, class weights, ...
    task_kinds = (SEGMENTATION,)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        check_trainer_fits_task(type(self).__name__, self.task_kinds, plans)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.oversample_foreground_percent = self.recipe.oversample_foreground_percent

    fomo_network_builder = PLANS  # what build_network_architecture builds (fomo_nnunet.models.network_record)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        # nnU-Net's network of the plans; on a CPU its convolutions use oneDNN at batch 1 too, which makes
        # nnUNetv2_predict's sliding window several times faster for small networks (fomo_nnunet.models.cpu_convolution)
        return build_plans_network(configuration_manager, num_input_channels, num_output_channels,
                                   deep_supervision=enable_deep_supervision)

    def _build_loss(self):
        loss = super()._build_loss()
        if self.recipe.ce_class_weighting is None:
            return loss
        if self.label_manager.has_regions:
            raise ValueError(f"{type(self).__name__}: cross-entropy class weights need labels, but this dataset "
                             "is trained on regions (sigmoid outputs, no cross-entropy)")
        weights = torch.tensor(self.ce_class_weights(), dtype=torch.float32, device=self.device)
        compound = [m for m in loss.modules() if isinstance(m, DC_and_CE_loss)]
        if len(compound) != 1:
            raise RuntimeError("nnU-Net's loss no longer holds one DC_and_CE_loss: class weights not applied")
        compound[0].ce.weight = weights  # a buffer of nn.CrossEntropyLoss
        return loss

    def ce_class_weights(self) -> np.ndarray:
        """The cross-entropy weight per label, from the label frequencies of this fold's training cases."""
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        keys = sorted(self.do_split()[0])
        cases = self.recipe.class_weight_cases
        if len(keys) > cases:  # a sample is enough for frequencies; the seed fixes it
            keys = sorted(np.random.RandomState(self.fomo_seed).choice(keys, cases, replace=False))
        dataset = self.dataset_class(self.preprocessed_dataset_folder, keys)
        names = self.label_manager.all_labels
        counts = label_voxel_counts((dataset.load_case(k)[1][:] for k in keys),
                                    self.label_manager.num_segmentation_heads, self.label_manager.ignore_label)
        weights = sqrt_inverse_frequency(counts, self.recipe.class_weight_cap)
        self.print_to_log_file(f"cross-entropy class weights ({self.recipe.ce_class_weighting} over {len(keys)} training "
                               "cases): " + ", ".join(f"label {n}: {w:.2f} ({c} voxels)"
                                                     for n, w, c in zip(names, weights, counts)))
        return weights

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.fold == "all" and not self.recipe.validate_fold_all:
            self.print_to_log_file("fold 'all' trains on every case, so its validation cases are training cases: "
                                   "final validation skipped (validate_fold_all = False)")
            return
        return super().perform_actual_validation(save_probabilities)


# ---- variants: one recipe each (fomo_nnunet.training.recipes) -------------------------------------------
class nnUNetTrainerFomoSeg_nodecoder(nnUNetTrainerFomoSeg):
    """Load the encoder only; the decoder starts fresh like the output layers."""
    recipe = replace(SEG, load_decoder=False)


class nnUNetTrainerFomoSeg_tiny(nnUNetTrainerFomoSeg):
    """CPU-sized budget for the demo and tests (pair with tiny-preset plans): 180 steps, a few minutes on 2 cores
    (TINY_SEG: why each setting)."""
    recipe = TINY_SEG


class nnUNetTrainerFomoSeg_tiny_smoke(nnUNetTrainerFomoSeg):
    """A few iterations, for tests."""
    recipe = replace(TINY_SEG, **SMOKE_FINETUNING)


class nnUNetTrainerFomoSeg_tiny_long(nnUNetTrainerFomoSeg):
    """Three times the tiny budget (540 steps): the tiny-long benchmark."""
    recipe = replace(TINY_SEG, num_epochs=36)


class nnUNetTrainerFomoSeg_100epochs(nnUNetTrainerFomoSeg):
    recipe = replace(SEG, num_epochs=100)


class nnUNetTrainerFomoSeg_500epochs(nnUNetTrainerFomoSeg):
    recipe = replace(SEG, num_epochs=500)

