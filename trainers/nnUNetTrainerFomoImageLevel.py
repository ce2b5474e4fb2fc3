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

import csv
import json
import os

import numpy as np
import torch
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from torch import nn

from fomo_nnunet.finetune import FinetuneRecipe, SmokeBudget, TinyBudget
from fomo_nnunet.image_level import (ImageLevelDataLoader, TargetScaler, crop_or_pad, decode_outputs, load_targets,
                                     task_from_plans, validation_score, without_spatial_augmentation)
from fomo_nnunet.models.network_record import IMAGE_LEVEL, build_image_level_network
from fomo_nnunet.tasks import CLASSIFICATION, REGRESSION
from fomo_nnunet.trainer_checks import (check_trainer_fits_task, fold_advice, refuse_nnunet_predictor,
                                        validation_problem)
from fomo_nnunet.training import AmpStep, DistributedRun, EpochEnd, PreemptibleRun, SeededRun, unwrap


class CentredCropValidation:
    """The image-level trainers' final validation (nnU-Net's segments sliding windows instead): every
    validation case once, its centred crop, predictions to validation/predictions.csv and the task's
    metric to validation/summary.json."""

    def centred_crop(self, data) -> torch.Tensor:
        """(1, C, *patch): a preprocessed case's centred crop (zero-padded where smaller), on the CPU."""
        return torch.from_numpy(crop_or_pad(np.asarray(data), self.configuration_manager.patch_size)[None]).float()

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.local_rank != 0:
            return
        _, dataset_val = self.get_tr_and_val_datasets()
        if not self.targets:
            self.targets = load_targets(self.preprocessed_dataset_folder_base, dataset_val.identifiers, self.kind)
        net = unwrap(self.network)
        net.eval()
        rows = []
        for key in dataset_val.identifiers:
            data = dataset_val.load_case(key)[0]
            x = self.centred_crop(data)
            with torch.no_grad():
                out = decode_outputs(net(x.to(self.device)), self.kind, self._target_stats())[0]
            rows.append((key, float(out[1]) if self.kind == CLASSIFICATION and out.shape[0] == 2 else out,
                         self.targets[key]))
        folder = os.path.join(self.output_folder, "validation")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "predictions.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case_id", "prediction", "target"])
            for key, p, t in rows:
                w.writerow([key, p if np.ndim(p) == 0 else json.dumps(np.asarray(p).tolist()), t])
        preds = np.array([r[1] for r in rows], dtype=float)
        if self.kind == CLASSIFICATION and preds.ndim == 1:
            preds = np.stack([1 - preds, preds], 1)
        name, value, _ = validation_score(self.kind, preds, np.array([r[2] for r in rows], dtype=float))
        with open(os.path.join(folder, "summary.json"), "w") as f:
            json.dump({"metric": name, "value": value, "n_cases": len(rows)}, f, indent=1)
        self.print_to_log_file(f"final validation on {len(rows)} case(s), centred crop: {name} = {value:.4f}")


class nnUNetTrainerFomoImageLevel(DistributedRun, SeededRun, AmpStep, EpochEnd, CentredCropValidation,
                                  FinetuneRecipe, PreemptibleRun, nnUNetTrainer):
    """Shared by the classification and regression trainers; the task's kind (from the plans) decides."""

    # the head (fomo_nnunet.models.heads.PoolingHead)
    head_stages: tuple[int, ...] = (-1,)   # encoder stages pooled and concatenated; -1 is the deepest
    head_hidden: int = 256
    head_dropout: float = 0.2
    head_pooling: str = "avg"              # "avg", or "avgmax" (average and maximum: focal findings survive)
    # data
    crop_jitter_fraction: float = 0.1      # random shift of the centred crop, as a fraction of the patch
    augment: bool | str = True             # True: nnU-Net's augmentation of the training crops; "intensity": its
                                           # intensity transforms only (no rotation, scaling, mirroring); False: none
    balance_classes: bool = True           # classification: draw every class equally often
    huber_delta: float = 1.0               # regression: Huber loss on standardised targets
    standardise_head_inputs: bool = False  # before the first step, standardise the head's pooled features by
                                           # their mean and sd over training cases' centred crops (saved with
                                           # the weights)
    standardise_cases: int = 64            # at most this many training cases for those statistics
    # the few-shot recipe (fomo_nnunet.finetune.FinetuneRecipe) for tens of cases
    epochs = 100
    iterations_per_epoch = 50
    val_iterations_per_epoch = 10
    fresh_only_epochs = 5
    warmup_epochs = 5
    checkpoint_every = 20
    grad_clip = 12.0                       # max gradient norm (nnU-Net's)

    task_kinds: tuple[str, ...] = (CLASSIFICATION, REGRESSION)  # the kinds of task this trainer trains

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

    # ---- network: the pretrained U-Net's encoder and a pooling head ----------------------------
    fomo_network_builder = IMAGE_LEVEL  # what build_network_architecture builds (fomo_nnunet.models.network_record)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        refuse_nnunet_predictor(cls.__name__, task_from_plans(plans_manager.plans).kind)
        return build_image_level_network(plans_manager.plans, configuration_manager, num_input_channels,
                                         cls.head_stages, cls.head_hidden, cls.head_dropout, cls.head_pooling)

    def set_deep_supervision_enabled(self, enabled: bool):
        pass  # a pooling head has one output

    def _build_loss(self):
        if self.kind == CLASSIFICATION:
            return nn.CrossEntropyLoss()
        return nn.HuberLoss(delta=self.huber_delta)

    # ---- data: targets from targets.json, centred crops, balanced classes -----------------------
    def get_dataloaders(self):
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch = self.configuration_manager.patch_size
        rotation, dummy_2d, initial_patch, mirror_axes = self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        common = dict(is_cascaded=False, foreground_labels=self.label_manager.foreground_labels, regions=None,
                      ignore_label=None)
        norm_mask = self.configuration_manager.use_mask_for_norm
        if self.augment not in (True, False, "intensity"):
            raise ValueError(f"augment must be True, False or 'intensity', got {self.augment!r}")
        if self.augment == "intensity":  # crops at the patch size, as they are cut; no mirroring
            initial_patch = patch
            tr_transforms = without_spatial_augmentation(self.get_training_transforms(
                patch, rotation, None, (), dummy_2d, use_mask_for_norm=norm_mask, **common))
            self.print_to_log_file("training crops get nnU-Net's intensity augmentation only (augment = 'intensity')")
        elif self.augment:
            tr_transforms = self.get_training_transforms(patch, rotation, None, mirror_axes, dummy_2d,
                                                         use_mask_for_norm=norm_mask, **common)
        else:  # as nnU-Net's NoDA variant: the crop as it is, at the patch size
            initial_patch = patch
            tr_transforms = self.get_validation_transforms(None, **common)
            self.print_to_log_file("training crops are not augmented (augment = False)")
        val_transforms = self.get_validation_transforms(None, **common)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        self.targets = load_targets(self.preprocessed_dataset_folder_base,
                                    sorted({*dataset_tr.identifiers, *dataset_val.identifiers}), self.kind)
        self._check_validation_can_score([self.targets[k] for k in dataset_val.identifiers])
        if self.kind != CLASSIFICATION:
            self._set_target_stats(TargetScaler.fit([self.targets[k] for k in dataset_tr.identifiers]))
        jitter = [int(round(self.crop_jitter_fraction * p)) for p in patch]
        balance = self.kind == CLASSIFICATION and self.balance_classes
        dl_tr = ImageLevelDataLoader(dataset_tr, self.batch_size, initial_patch, patch, self.label_manager,
                                     self.targets, balance=balance, jitter=jitter, transforms=tr_transforms)
        dl_val = ImageLevelDataLoader(dataset_val, self.batch_size, patch, patch, self.label_manager,
                                      self.targets, transforms=val_transforms)
        return self.seeded_augmenters(dl_tr, dl_val, get_allowed_n_proc_DA())

    def _check_validation_can_score(self, targets: list[float]) -> None:
        metric = "AUROC" if self.kind == CLASSIFICATION else "MAE"
        problem = validation_problem(self.kind, targets, metric)
        if problem:
            self._select_by_loss = True
            self.print_to_log_file(f"WARNING: fold {self.fold}: {problem}; checkpoint_best.pth is picked by the "
                                   f"validation loss instead ({fold_advice(self.fold)})")

    def on_train_start(self):
        super().on_train_start()
        if self.standardise_head_inputs and self.current_epoch == 0:  # a resumed run has them in its checkpoint
            self._standardise_head_inputs()

    def _standardise_head_inputs(self) -> None:
        net = unwrap(self.network)
        dataset_tr, _ = self.get_tr_and_val_datasets()
        keys = sorted(dataset_tr.identifiers)[: self.standardise_cases]
        was_training = net.training
        net.eval()
        pooled = []
        with torch.no_grad():
            for key in keys:
                x = self.centred_crop(dataset_tr.load_case(key)[0]).to(self.device)
                pooled.append(net.head.pool(net.stage_features(x)).cpu())
        net.train(was_training)
        summary = net.head.set_input_statistics(torch.cat(pooled))
        self.print_to_log_file(
            f"head inputs standardised over the centred crops of {summary['cases']} training cases: median sd "
            f"{summary['median_sd']:.4g} per pooled feature, {summary['floored']} of {net.head.in_features} raised "
            "to 1 % of it (standardise_head_inputs)")

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


class TinyImageLevel(TinyBudget):
    """The demo's image-level recipe (fomo_nnunet.finetune.TinyBudget) with a head that pools the three
    deepest stages by average and maximum, on the centred crop without augmentation.

    Why (docs/results/demo-recipe.md): with the deepest stage's average alone, neither arm's classifier
    nor regressor left its starting point; a focal lesion is averaged away over the brain. nnU-Net's
    augmentation and a random shift of the crop kept the regressor from fitting even its training cases.
    Its own budget and augmentation are nnUNetTrainerFomoReg_tiny's (chosen later, on held-out training
    cases).
    """

    head_hidden = 64
    head_pooling = "avgmax"
    head_stages = (-3, -2, -1)
    augment = False
    crop_jitter_fraction = 0.0


# ---- variants: a subclass changes a few attributes, as nnU-Net writes them ------------------------
class nnUNetTrainerFomoCls_scratch(nnUNetTrainerFomoCls):
    use_pretrained = False


class nnUNetTrainerFomoCls_tiny(TinyImageLevel, nnUNetTrainerFomoCls):
    """CPU-sized budget for the demo (tiny-preset plans): 90 steps."""


class nnUNetTrainerFomoCls_tiny_scratch(nnUNetTrainerFomoCls_tiny):
    use_pretrained = False


class nnUNetTrainerFomoCls_tiny_smoke(SmokeBudget, nnUNetTrainerFomoCls_tiny):
    """A few iterations, for tests."""


class nnUNetTrainerFomoCls_tiny_smoke_scratch(nnUNetTrainerFomoCls_tiny_smoke):
    use_pretrained = False


class nnUNetTrainerFomoCls_tiny_long(nnUNetTrainerFomoCls_tiny):
    """Three times the tiny budget (270 steps): the tiny-long benchmark."""
    epochs = 18


class nnUNetTrainerFomoCls_tiny_long_scratch(nnUNetTrainerFomoCls_tiny_long):
    use_pretrained = False


class nnUNetTrainerFomoCls_250epochs(nnUNetTrainerFomoCls):
    epochs = 250


class nnUNetTrainerFomoCls_250epochs_scratch(nnUNetTrainerFomoCls_250epochs):
    use_pretrained = False


class nnUNetTrainerFomoReg_scratch(nnUNetTrainerFomoReg):
    use_pretrained = False


class nnUNetTrainerFomoReg_tiny(TinyImageLevel, nnUNetTrainerFomoReg):
    """CPU-sized budget for the demo (tiny-preset plans): 360 steps with nnU-Net's intensity augmentation,
    the head's pooled features standardised over training cases before the first step.

    Chosen on training data only (FOMO-Synth brain age, nnU-Net's fold 0 of the training cases), by the mean
    held-out MAE of both arms; the pooled features of the encoder vary little between brains, so without
    `standardise_head_inputs` the head's outputs stayed compressed toward the mean. The study, its figures
    and commits: docs/results/brain-age.md.
    """
    epochs = 24
    standardise_head_inputs = True
    augment = "intensity"


class nnUNetTrainerFomoReg_tiny_scratch(nnUNetTrainerFomoReg_tiny):
    use_pretrained = False


class nnUNetTrainerFomoReg_tiny_smoke(SmokeBudget, nnUNetTrainerFomoReg_tiny):
    """A few iterations, for tests."""


class nnUNetTrainerFomoReg_tiny_smoke_scratch(nnUNetTrainerFomoReg_tiny_smoke):
    use_pretrained = False


class nnUNetTrainerFomoReg_tiny_long(nnUNetTrainerFomoReg_tiny):
    """Three times the tiny budget (1080 steps): the tiny-long benchmark."""
    epochs = 72


class nnUNetTrainerFomoReg_tiny_long_scratch(nnUNetTrainerFomoReg_tiny_long):
    use_pretrained = False


class nnUNetTrainerFomoReg_250epochs(nnUNetTrainerFomoReg):
    epochs = 250


class nnUNetTrainerFomoReg_250epochs_scratch(nnUNetTrainerFomoReg_250epochs):
    use_pretrained = False
