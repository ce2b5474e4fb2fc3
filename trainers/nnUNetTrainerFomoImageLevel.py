"""Image-level finetuning: `nnUNetv2_train ... -p fomoPlans -tr nnUNetTrainerFomoCls | nnUNetTrainerFomoReg`.

The pretrained encoder (loaded exactly as for segmentation: safe loading, stem adaptation, the
report) feeds a pooling head (fomo_nnunet.models.heads). nnU-Net's planning, preprocessing, augmentation
and training loop stay; what changes is what a batch carries (the case's target from targets.json),
where a patch is cut (the brain centre, with a small random shift, no foreground oversampling), the
loss, and validation by the task's own metric (AUROC, MAE), which also picks checkpoint_best.pth.
The training step and the epoch end are the trainer toolkit's (fomo_nnunet.training).
Predict with `fomo-nnunet predict` (nnU-Net's predictor is for segmentations).
"""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from torch import nn

from fomo_nnunet.finetune import Finetuning
from fomo_nnunet.image_level import (ImageLevelDataLoader, TargetScaler, centred_crop, centred_crop_predictions,
                                     decode_outputs, load_targets, standardise_head_inputs, task_from_plans,
                                     training_crop_transforms, validation_score, write_centred_crop_validation)
from fomo_nnunet.models.network_record import IMAGE_LEVEL, build_image_level_network
from fomo_nnunet.tasks import CLASSIFICATION, REGRESSION
from fomo_nnunet.trainer_checks import (check_trainer_fits_task, fold_advice, refuse_nnunet_predictor,
                                        validation_problem)
from fomo_nnunet.training import AmpStep, EpochEnd, FomoTrainer, unwrap
from fomo_nnunet.training.recipes import IMAGE_LEVEL as IMAGE_LEVEL_RECIPE
from fomo_nnunet.training.recipes import SMOKE_FINETUNING, TINY_CLS, TINY_REG, ImageLevelRecipe


class nnUNetTrainerFomoImageLevel(Finetuning, AmpStep, EpochEnd, FomoTrainer):
    """Shared by the classification and regression trainers; the task's kind (from the plans) decides."""

    recipe: ImageLevelRecipe = IMAGE_LEVEL_RECIPE  # fomo_nnunet.training.recipes: budget, head, crops, loss
    task_kinds: tuple[str, ...] = (CLASSIFICATION, REGRESSION)  # the kinds of task this trainer trains
    grad_clip = property(lambda self: self.recipe.grad_clip)    # AmpStep's clipping norm

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        check_trainer_fits_task(type(self).__name__, self.task_kinds, plans)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.task = task_from_plans(self.plans_manager.plans)
        self.kind = self.task.kind
        self.enable_deep_supervision = False
        self.oversample_foreground_percent = 0.0
        self.logger.local_logger.my_fantastic_logging["val_metric"] = []
        self.targets: dict[str, float] = {}
        # the task's metric (validation_score): its name, and the last value as a score (higher is better)
        self._metric_name, self._val_score = "metric", float("nan")
        self._select_by_loss = False  # the validation fold cannot score the metric: the loss picks checkpoint_best

    # ---- network: the pretrained U-Net's encoder and a pooling head; data; steps; epoch end -----------
    fomo_network_builder = IMAGE_LEVEL  # what build_network_architecture builds (fomo_nnunet.models.network_record)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        refuse_nnunet_predictor(cls.__name__, task_from_plans(plans_manager.plans).kind)
        h = cls.recipe.head
        return build_image_level_network(plans_manager.plans, configuration_manager, num_input_channels, h.stages,
                                         h.hidden, h.dropout, h.pooling)

    def set_deep_supervision_enabled(self, enabled: bool):
        pass  # a pooling head has one output

    def _build_loss(self):
        return nn.CrossEntropyLoss() if self.kind == CLASSIFICATION else nn.HuberLoss(delta=self.recipe.huber_delta)

    def get_dataloaders(self):
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch = self.configuration_manager.patch_size
        rotation, dummy_2d, initial_patch, mirror_axes = self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        common = dict(is_cascaded=False, foreground_labels=self.label_manager.foreground_labels, regions=None,
                      ignore_label=None)
        tr_transforms, initial_patch = training_crop_transforms(self, self.recipe.augment, patch, rotation, dummy_2d,
                                                                mirror_axes, initial_patch, common)
        val_transforms = self.get_validation_transforms(None, **common)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        self.targets = load_targets(self.preprocessed_dataset_folder_base,
                                    sorted({*dataset_tr.identifiers, *dataset_val.identifiers}), self.kind)
        self._check_validation_can_score([self.targets[k] for k in dataset_val.identifiers])
        if self.kind != CLASSIFICATION:
            self._set_target_stats(TargetScaler.fit([self.targets[k] for k in dataset_tr.identifiers]))
        jitter = [int(round(self.recipe.crop_jitter_fraction * p)) for p in patch]
        balance = self.kind == CLASSIFICATION and self.recipe.balance_classes
        dl_tr = ImageLevelDataLoader(dataset_tr, self.batch_size, initial_patch, patch, self.label_manager,
                                     self.targets, balance=balance, jitter=jitter, transforms=tr_transforms)
        dl_val = ImageLevelDataLoader(dataset_val, self.batch_size, patch, patch, self.label_manager,
                                      self.targets, transforms=val_transforms)
        return self.seeded_augmenters(dl_tr, dl_val, get_allowed_n_proc_DA())

    def _check_validation_can_score(self, targets: list[float]) -> None:
        problem = validation_problem(self.kind, targets, "AUROC" if self.kind == CLASSIFICATION else "MAE")
        if problem:  # the metric cannot score this fold: the validation loss picks checkpoint_best
            self._select_by_loss = True
            self.print_to_log_file(f"WARNING: fold {self.fold}: {problem}; checkpoint_best.pth is picked by the "
                                   f"validation loss instead ({fold_advice(self.fold)})")

    def on_train_start(self):
        super().on_train_start()
        if self.recipe.standardise_head_inputs and self.current_epoch == 0:  # a resumed run has them saved
            dataset_tr, _ = self.get_tr_and_val_datasets()
            keys = sorted(dataset_tr.identifiers)[: self.recipe.standardise_cases]
            patch = self.configuration_manager.patch_size
            self.print_to_log_file(standardise_head_inputs(unwrap(self.network), (
                centred_crop(dataset_tr.load_case(k)[0], patch).to(self.device) for k in keys)))

    def perform_actual_validation(self, save_probabilities: bool = False):
        """Every validation case once, its centred crop (nnU-Net's segments sliding windows instead):
        validation/predictions.csv and the task's metric in validation/summary.json."""
        if self.local_rank != 0:
            return
        _, dataset_val = self.get_tr_and_val_datasets()
        if not self.targets:
            self.targets = load_targets(self.preprocessed_dataset_folder_base, dataset_val.identifiers, self.kind)
        rows = centred_crop_predictions(unwrap(self.network), dataset_val, self.configuration_manager.patch_size,
                                        self.device, self.kind, self._target_stats(), self.targets)
        name, value = write_centred_crop_validation(os.path.join(self.output_folder, "validation"), rows, self.kind)
        self.print_to_log_file(f"final validation on {len(rows)} case(s), centred crop: {name} = {value:.4f}")

    def _set_target_stats(self, scaler: TargetScaler) -> None:
        self._network_for_transfer().fomo_target_stats.copy_(torch.tensor([scaler.mean, scaler.std]))
        self.print_to_log_file(f"regression targets standardised with mean {scaler.mean:.3f} and std "
                               f"{scaler.std:.3f} ({self.task.unit})")

    def _target_stats(self) -> tuple[float, float] | None:
        stats = getattr(self._network_for_transfer(), "fomo_target_stats", None)
        return None if stats is None else tuple(float(v) for v in stats)

    def _batch_targets(self, batch: dict) -> torch.Tensor:
        y = batch["fomo_target"].to(self.device, non_blocking=True)
        if self.kind == CLASSIFICATION:
            return y.long()
        mean, std = self._target_stats()
        return ((y - mean) / std)[:, None]

    # ---- steps ---------------------------------------------------------------------------------
    def training_loss(self, batch: dict) -> torch.Tensor:
        data = batch["data"].to(self.device, non_blocking=True)
        target = self._batch_targets(batch)
        with self.autocast():
            return self.loss(self.network(data).float(), target)

    def validation_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = self._batch_targets(batch)
        with torch.no_grad(), self.autocast():
            out = self.network(data).float()
            loss = self.loss(out, target)
        return {"loss": loss.detach().cpu().numpy(),
                "prediction": decode_outputs(out, self.kind, self._target_stats()),
                "target": batch["fomo_target"].numpy()}

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        outputs = collate_outputs(val_outputs)
        ranks = self.from_all_ranks((float(np.mean(outputs["loss"])), np.concatenate(outputs["prediction"]),
                                     np.concatenate(outputs["target"])))
        predictions, targets = (np.concatenate([r[i] for r in ranks]) for i in (1, 2))
        self._metric_name, value, self._val_score = validation_score(self.kind, predictions, targets)
        self.logger.log("val_losses", float(np.mean([r[0] for r in ranks])), self.current_epoch)
        self.logger.log("val_metric", value, self.current_epoch)

    # ---- epoch end: the task's metric picks checkpoint_best ------------------------------------
    def epoch_lines(self) -> list[tuple]:
        log = self.logger.get_value
        return [("train_loss", np.round(log("train_losses", -1), 4)), ("val_loss", np.round(log("val_losses", -1), 4)),
                (f"val {self._metric_name} (sampled crops)", np.round(log("val_metric", -1), 4))]

    def selection(self) -> tuple[float, str]:
        if self._select_by_loss:  # higher is better: the negative loss
            loss = self.logger.get_value("val_losses", -1)
            return -loss, f"New best val loss: {np.round(loss, 4)} (the {self._metric_name} cannot score this fold)"
        value = self.logger.get_value("val_metric", -1)
        return self._val_score, f"New best val {self._metric_name}: {np.round(value, 4)}"

    def write_pictures(self, epoch: int) -> None:
        metric = {} if self._select_by_loss else {f"val {self._metric_name}": "val_metric"}  # no empty axis
        self.plot_losses(f"{self.__class__.__name__}: {self.task.key} ({self.task.name})", metric, self._metric_name)


class nnUNetTrainerFomoCls(nnUNetTrainerFomoImageLevel):
    """Classification (infarct, polymicrogyria; binary or multiclass): cross-entropy, balanced classes."""
    task_kinds = (CLASSIFICATION,)


class nnUNetTrainerFomoReg(nnUNetTrainerFomoImageLevel):
    """Regression (brain age): standardised targets, Huber loss, predictions in years."""
    task_kinds = (REGRESSION,)


# ---- variants: one recipe each (fomo_nnunet.training.recipes) -------------------------------------------
class nnUNetTrainerFomoCls_tiny(nnUNetTrainerFomoCls):
    """CPU-sized budget for the demo (tiny-preset plans): 90 steps (TINY_CLS: why each setting)."""
    recipe = TINY_CLS


class nnUNetTrainerFomoCls_tiny_smoke(nnUNetTrainerFomoCls):
    """A few iterations, for tests."""
    recipe = replace(TINY_CLS, **SMOKE_FINETUNING)


class nnUNetTrainerFomoCls_tiny_long(nnUNetTrainerFomoCls):
    """Three times the tiny budget (270 steps): the tiny-long benchmark."""
    recipe = replace(TINY_CLS, num_epochs=18)


class nnUNetTrainerFomoCls_250epochs(nnUNetTrainerFomoCls):
    recipe = replace(IMAGE_LEVEL_RECIPE, num_epochs=250)


class nnUNetTrainerFomoReg_tiny(nnUNetTrainerFomoReg):
    """CPU-sized budget for the demo (tiny-preset plans): 360 steps, intensity augmentation, standardised head
    inputs (TINY_REG: why each setting; docs/results/brain-age.md)."""
    recipe = TINY_REG


class nnUNetTrainerFomoReg_tiny_smoke(nnUNetTrainerFomoReg):
    """A few iterations, for tests."""
    recipe = replace(TINY_REG, **SMOKE_FINETUNING)


class nnUNetTrainerFomoReg_tiny_long(nnUNetTrainerFomoReg):
    """Three times the tiny budget (1080 steps): the tiny-long benchmark."""
    recipe = replace(TINY_REG, num_epochs=72)


class nnUNetTrainerFomoReg_250epochs(nnUNetTrainerFomoReg):
    recipe = replace(IMAGE_LEVEL_RECIPE, num_epochs=250)

