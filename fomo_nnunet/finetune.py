"""Few-shot finetuning pieces shared by the segmentation, classification and regression trainers.

- which checkpoint the plans name, and loading it into a freshly built network (safe loading,
  stem adaptation and the report come from fomo_nnunet.models.transfer);
- parameter groups that know which tensors are pretrained;
- the schedule (fomo_nnunet.training.EpochSchedule): first only the fresh parts learn (pretrained
  groups at lr 0), then the whole network warms up linearly, then nnU-Net's polynomial decay. A
  run on from-scratch plans has no pretrained group, so the same recipe reduces to warmup + poly for
  every parameter;
- `Finetuning`, the mixin of the finetuning trainers: the plans decide whether the run loads pretrained
  weights (plans written by `fomo-nnunet plan transfer --from-scratch` name no checkpoint), and the recipe
  (fomo_nnunet.training.recipes.FinetuneRecipe) how it learns, with the plans' adaptation applied
  (fomo_nnunet.training.adaptation; `plan transfer --adapt`).
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from fomo_nnunet.training import EpochLR, EpochSchedule, every_nth_epoch, unwrap
from fomo_nnunet.training.adaptation import adaptation_from_plans, adapted_recipe
from fomo_nnunet.training.recipes import OPTIMIZERS, FinetuneRecipe


def pretrained_checkpoint_from_plans(plans: dict) -> str | None:
    """The checkpoint `fomo-nnunet plan transfer` recorded, or None for from-scratch plans."""
    return (plans.get("fomo") or {}).get("pretrained_checkpoint")


def load_pretrained(network: nn.Module, plans: dict, load_decoder: bool, log=print):
    """Load the plans' pretrained checkpoint into `network`; returns the TransferReport (or None)."""
    from fomo_nnunet.trainer_checks import check_pretrained_unchanged
    from fomo_nnunet.models.transfer import transfer_from_checkpoint

    path = pretrained_checkpoint_from_plans(plans)
    if path is None:
        raise ValueError(f"plans '{plans.get('plans_name')}' name no pretrained checkpoint (written with "
                         f"--from-scratch?); rerun `fomo-nnunet plan transfer --pretrained`")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained checkpoint {path} named in plans '{plans.get('plans_name')}' "
                                f"does not exist (moved? rerun `fomo-nnunet plan transfer`)")
    check_pretrained_unchanged(path, plans)
    report = transfer_from_checkpoint(network, path, load_decoder=load_decoder)
    log(f"pretrained weights from {path}: {report.summary()}")
    return report


REPORT_FILE = "transfer_report.json"


def save_report(report, folder: str) -> None:
    """transfer_report.json in the fold folder: what was loaded, adapted and left fresh (read on resume)."""
    from dataclasses import asdict

    from fomo_nnunet.io.atomic import write_json

    os.makedirs(folder, exist_ok=True)
    write_json({"summary": report.summary(), **asdict(report)}, os.path.join(folder, REPORT_FILE))


def pretrained_names(report) -> set[str]:
    """Names of the tensors that came from the checkpoint (loaded as they were, or adapted)."""
    return set(report.loaded) | set(report.adapted)


def pretrained_names_from_saved_report(folder: str) -> set[str]:
    path = os.path.join(folder, REPORT_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: cannot rebuild the pretrained/fresh parameter groups to resume")
    with open(path) as f:
        saved = json.load(f)
    return set(saved["loaded"]) | set(saved["adapted"])


def split_parameters(network: nn.Module, pretrained_names: set[str]) -> tuple[list, list]:
    """(pretrained, fresh) parameter lists; names are matched without DDP/compile prefixes."""
    pretrained, fresh = [], []
    for name, p in network.named_parameters():
        clean = name.replace("module.", "").replace("_orig_mod.", "")
        (pretrained if clean in pretrained_names else fresh).append(p)
    return pretrained, fresh


def build_optimizer(network: nn.Module, pretrained_names: set[str], lr: float, weight_decay: float,
                    pretrained_lr_scale: float, schedule: EpochSchedule, kind: str = "sgd"):
    """A group for pretrained and one for fresh tensors; `kind` "sgd" is nnU-Net's (nesterov momentum 0.99),
    "adamw" is AdamW (betas 0.9/0.999), as the FOMO baselines finetune."""
    pretrained, fresh = split_parameters(network, pretrained_names)
    groups = [{"params": fresh, "lr": lr, "pretrained": False}]
    if pretrained:
        groups.append({"params": pretrained, "lr": lr * pretrained_lr_scale, "pretrained": True})
    if kind == "sgd":
        optimizer = torch.optim.SGD(groups, lr, weight_decay=weight_decay, momentum=0.99, nesterov=True)
    elif kind == "adamw":
        optimizer = torch.optim.AdamW(groups, lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {kind!r} (choose from {', '.join(OPTIMIZERS)})")
    return optimizer, EpochLR(optimizer, schedule)


class Finetuning:
    """Mixin for nnU-Net trainers (placed before fomo_nnunet.training.FomoTrainer): pretrained initialisation
    from the plans and the few-shot recipe (`recipe`, a FinetuneRecipe).

    nnU-Net builds the network and then calls `configure_optimizers`: the one moment the network
    exists and the optimiser does not, so the weights are loaded there and the parameter groups
    know which tensors are pretrained. Whether there are any is the plans' choice (`loads_pretrained`):
    plans written by `fomo-nnunet plan transfer --from-scratch` name no checkpoint, and the run starts from a
    random initialisation with the same network and recipe.
    """

    recipe: FinetuneRecipe = FinetuneRecipe()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # resuming (--c) restores every weight from checkpoint_latest: no need to load the pretraining
        self._resuming = bool(plans.get("continue_training", False))  # nnU-Net pops it in __init__
        # the plans' adaptation (`plan transfer --adapt`) on the class's recipe, before the base applies it
        try:
            self.recipe = adapted_recipe(type(self).recipe, plans)
        except ValueError as e:
            from fomo_nnunet.trainer_checks import refuse
            refuse(str(e))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.transfer_report = None
        self.loads_pretrained = pretrained_checkpoint_from_plans(self.plans_manager.plans) is not None
        if self.recipe.progress_plot_every > 1:
            self._throttle_progress_plot()

    def run_record(self) -> dict:
        plans = self.plans_manager.plans
        return super().run_record() | {"loads_pretrained": self.loads_pretrained,
                                       "pretrained_checkpoint": pretrained_checkpoint_from_plans(
                                           plans) if self.loads_pretrained else None,
                                       "adaptation": adaptation_from_plans(plans)}

    def _throttle_progress_plot(self) -> None:
        """Draw nnU-Net's progress.png every `progress_plot_every` epochs and after the last one."""
        draw = self.logger.plot_progress_png

        def maybe_draw(output_folder):
            # on_epoch_end plots before it counts the epoch
            if every_nth_epoch(self.current_epoch, self.recipe.progress_plot_every, self.num_epochs):
                draw(output_folder)

        self.logger.plot_progress_png = maybe_draw

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch, mirror_axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not self.recipe.test_time_mirroring:
            # mirroring stays in the training augmentation; only inference skips it (saved in checkpoints)
            self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch, mirror_axes

    def _network_for_transfer(self) -> nn.Module:
        """The module whose state dict matches the pretraining U-Net (the whole network by default)."""
        # by its wrappers, not is_ddp: configure_optimizers runs before nnU-Net wraps the network in DDP
        return unwrap(self.network)

    def configure_optimizers(self):
        pretrained: set[str] = set()
        recipe = self.recipe
        if self.loads_pretrained:
            plans = self.plans_manager.plans
            if self._resuming:
                # the optimiser state to restore was saved with these groups
                names = pretrained_names_from_saved_report(self.output_folder)
            else:
                self.transfer_report = load_pretrained(self._network_for_transfer(), plans, recipe.load_decoder,
                                                       log=self.print_to_log_file)
                if self.local_rank == 0:  # one writer under DDP
                    save_report(self.transfer_report, self.output_folder)
                names = pretrained_names(self.transfer_report)
            pretrained = {self._transfer_prefix() + n for n in names}
        else:
            self.print_to_log_file(f"training from scratch: random initialisation (plans "
                                   f"'{self.plans_manager.plans_name}' name no pretrained checkpoint: written by "
                                   f"`fomo-nnunet plan transfer --from-scratch`)")
        schedule = EpochSchedule(self.num_epochs, recipe.warmup_epochs,
                                 fresh_only_epochs=recipe.fresh_only_epochs if pretrained else 0)
        return build_optimizer(self.network, pretrained, self.initial_lr, self.weight_decay,
                               recipe.pretrained_lr_scale, schedule, recipe.optimizer_name)

    def _transfer_prefix(self) -> str:
        """Name prefix of the transferred module inside the trainer's network ('' when it is the network)."""
        return ""
