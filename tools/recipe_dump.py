"""Every recipe setting of every trainer this project registers, resolved without training, as JSON.

Usage: `python tools/recipe_dump.py [-o OUT.json]`. For each `nnUNetTrainer*` class in trainers/ it builds
the trainer as nnU-Net does (`__init__` on CPU, with small hand-written plans: nothing is read from disk,
no network is built) and reads what nnU-Net's loop will use: the budget in nnU-Net's attribute names
(num_epochs, initial_lr, weight_decay, save_every, ...), the learning-rate factor of every epoch for the
fresh and the pretrained parameter groups, the inference mirroring, and each trainer's own settings (head,
augmentation, masking, objective settings recorded in pretraining checkpoints). Whether a finetuning run
loads pretrained weights is resolved for plans that name a checkpoint and for from-scratch plans
(`fomo-nnunet plan transfer --from-scratch`); the from-scratch resolution is written as `<trainer>_scratch`.

Its purpose: a refactoring of the recipes must leave this dump unchanged, key for key
(`python tools/recipe_dump.py --compare BEFORE.json AFTER.json`).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import inspect
import io
import json
import os
import pkgutil
import sys
import tempfile

def _plans(task: str | None, checkpoint: str | None) -> dict:
    arch = {"n_stages": 4, "features_per_stage": [8, 16, 32, 64],
            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 4,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * 3, "n_blocks_per_stage": [1, 1, 1, 1],
            "n_conv_per_stage_decoder": [1, 1, 1], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}}
    plans = {
        "dataset_name": "Dataset999_RecipeDump", "plans_name": "recipeDumpPlans",
        "original_median_spacing_after_transp": [4.0, 4.0, 4.0], "original_median_shape_after_transp": [40, 44, 40],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": {
            "data_identifier": "recipeDump_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": [32, 32, 32], "median_image_size_in_voxels": [40.0, 44.0, 40.0], "spacing": [4.0, 4.0, 4.0],
            "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [True],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                             "arch_kwargs": arch, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": False}},
        "experiment_planner_used": "RecipeDump", "label_manager": "LabelManager", "continue_training": False,
        "foreground_intensity_properties_per_channel": {"0": {"mean": 0.0, "std": 1.0, "percentile_00_5": 0.0,
                                                              "percentile_99_5": 1.0, "max": 1.0, "min": 0.0,
                                                              "median": 0.0}},
    }
    if task is not None:
        plans["fomo"] = {"role": "finetune", "task": task, "pretrained_checkpoint": checkpoint,
                         "pretrained_sha256": None}
    return plans


DATASET_JSON = {"channel_names": {"0": "T1w"}, "labels": {"background": 0, "lesion": 1}, "numTraining": 4,
                "file_ending": ".nii.gz"}


def trainer_classes() -> dict[str, type]:
    """Every nnUNetTrainer* class defined in the trainers package, by name."""
    from fomo_nnunet.paths import TRAINERS_PACKAGE, trainers_dir

    found = {}
    for m in pkgutil.iter_modules([str(trainers_dir())]):
        module = importlib.import_module(f"{TRAINERS_PACKAGE}.{m.name}")
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and name.startswith("nnUNetTrainer") and obj.__module__ == module.__name__:
                found[name] = obj
    return dict(sorted(found.items()))


def _jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


# the settings each family reads, by the name nnU-Net (or the trainer) gives them on the built trainer
BUDGET = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "initial_lr", "weight_decay",
          "save_every", "oversample_foreground_percent", "enable_deep_supervision")
FINETUNE = ("optimizer_name", "fresh_only_epochs", "warmup_epochs", "pretrained_lr_scale", "test_time_mirroring",
            "load_decoder", "progress_plot_every")
SEGMENTATION = ("validate_fold_all", "oversample_foreground", "ce_class_weighting", "class_weight_cap",
                "class_weight_cases")
IMAGE_LEVEL = ("head_stages", "head_hidden", "head_dropout", "head_pooling", "crop_jitter_fraction", "augment",
               "balance_classes", "huber_delta", "standardise_head_inputs", "standardise_cases", "task_kinds",
               "grad_clip")
MAE = ("autocast_dtype", "compile_network", "channels_last", "mask_ratio", "block_size", "learned_mask_token",
       "loss_kind", "loss_region", "warmup_fraction", "grad_clip", "adamw_betas", "augmentation", "decoder_skips",
       "skip_drop_p", "vicreg_weight", "vicreg_coefficients", "vicreg_pairs", "session_p_other", "picture_every",
       "progress_plot_every", "best_is_lowest", "val_mask_seed", "val_skip_seed", "embedding_stats_cases",
       "embedding_pooling", "objective")


# settings renamed to nnU-Net's names by the recipes refactor: the dump keeps the old key
RENAMED = {"oversample_foreground": "oversample_foreground_percent"}


def _setting(trainer, name: str):
    """A setting as the trainer reads it: an attribute, else a field of its recipe (a dataclass), of the
    recipe's head (`head_<field>`) or of the recipe's objective."""
    if hasattr(trainer, name):
        return getattr(trainer, name)
    recipe = getattr(trainer, "recipe", None)
    if dataclasses.is_dataclass(recipe):
        for owner, field_name in ((recipe, RENAMED.get(name, name)),
                                  (getattr(recipe, "head", None), name.removeprefix("head_")),
                                  (getattr(recipe, "objective", None), name)):
            if dataclasses.is_dataclass(owner) and hasattr(owner, field_name):
                return getattr(owner, field_name)
    raise AttributeError(f"{type(trainer).__name__} has no setting {name!r}")


def _loads_pretrained(trainer, plans: dict) -> bool:
    """Whether configure_optimizers would load the plans' checkpoint."""
    if hasattr(trainer, "loads_pretrained"):
        return bool(trainer.loads_pretrained)
    return bool(trainer.use_pretrained)  # main before the recipes refactor: a class attribute (_scratch twins)


def _lr_factors(trainer, pretrained: bool) -> dict:
    from fomo_nnunet.training import EpochSchedule

    schedule = EpochSchedule(trainer.num_epochs, _setting(trainer, "warmup_epochs"),
                             fresh_only_epochs=_setting(trainer, "fresh_only_epochs") if pretrained else 0)
    factors = {"fresh": [round(schedule.factor(e), 12) for e in range(trainer.num_epochs)]}
    if pretrained:
        factors["pretrained"] = [round(schedule.factor(e, True), 12) for e in range(trainer.num_epochs)]
    return factors


def _mae_lr_factors(trainer) -> list[float]:
    from fomo_nnunet.training import COSINE, EpochSchedule

    fraction = _setting(trainer, "warmup_fraction")
    warmup = max(1, round(fraction * trainer.num_epochs)) if fraction > 0 else 0
    schedule = EpochSchedule(trainer.num_epochs, warmup, decay=COSINE)
    return [round(schedule.factor(e), 12) for e in range(trainer.num_epochs)]


def _build(cls, plans: dict):
    import torch

    with contextlib.redirect_stdout(io.StringIO()):
        return cls(plans, "3d_fullres", 0, DATASET_JSON, torch.device("cpu"))


def _family(cls) -> str:
    names = {c.__name__ for c in cls.__mro__}
    if "nnUNetTrainerFomoMAE" in names:
        return "mae"
    if "nnUNetTrainerFomoImageLevel" in names:
        return "image_level"
    return "segmentation"


def _kind_task(cls) -> str:
    """The first task (fomo_nnunet.tasks) of the kind the trainer trains."""
    from fomo_nnunet.tasks import CLASSIFICATION, REGRESSION, SEGMENTATION, TASKS_BY_NUMBER

    names = {c.__name__ for c in cls.__mro__}
    kind = REGRESSION if "nnUNetTrainerFomoReg" in names else \
        CLASSIFICATION if "nnUNetTrainerFomoImageLevel" in names else SEGMENTATION
    return next(t.key for t in TASKS_BY_NUMBER.values() if t.kind == kind)


def resolve(cls, from_scratch_plans: bool = False) -> dict:
    """The settings of trainer class `cls` as a JSON-ready dict."""
    family = _family(cls)
    task = None if family == "mae" else _kind_task(cls)
    checkpoint = None if from_scratch_plans or task is None else "/nonexistent/pretrained.pth"
    plans = _plans(task, checkpoint)
    trainer = _build(cls, plans)
    out = {"family": family, "base_trainer": next(c.__name__ for c in cls.__mro__
                                                  if c.__name__ in ("nnUNetTrainerFomoMAE", "nnUNetTrainerFomoSeg",
                                                                    "nnUNetTrainerFomoImageLevel"))}
    out.update({k: getattr(trainer, k) for k in BUDGET})
    with contextlib.redirect_stdout(io.StringIO()):
        _, _, initial_patch, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    out["initial_patch_size"] = [int(p) for p in initial_patch]
    out["training_mirror_axes"] = mirror_axes
    out["inference_allowed_mirroring_axes"] = trainer.inference_allowed_mirroring_axes
    if family == "mae":
        out.update({k: _setting(trainer, k) for k in MAE})
        out["objective_settings"] = trainer.objective_settings()
        out["lr_factors"] = _mae_lr_factors(trainer)
        return _jsonable(out)
    pretrained = _loads_pretrained(trainer, plans)
    out["loads_pretrained"] = pretrained
    out.update({k: _setting(trainer, k) for k in FINETUNE})
    out["lr_factors"] = _lr_factors(trainer, pretrained)
    out.update({k: _setting(trainer, k) for k in (SEGMENTATION if family == "segmentation" else IMAGE_LEVEL)})
    return _jsonable(out)


def dump() -> dict:
    with tempfile.TemporaryDirectory(prefix="recipe_dump_") as root:
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            os.environ[k] = os.path.join(root, k)
        os.environ.setdefault("FOMO_SEED", "0")
        result = {}
        for name, cls in trainer_classes().items():
            result[name] = resolve(cls)
            # main before the recipes refactor had _scratch classes (use_pretrained = False) instead
            if _family(cls) != "mae" and not hasattr(cls, "use_pretrained"):
                result[name + "_scratch"] = resolve(cls, from_scratch_plans=True)
        return result


def compare(before: dict, after: dict) -> list[str]:
    """Differences, one line each: trainers missing or added, settings that differ."""
    lines = [f"missing after: {n}" for n in before if n not in after]
    lines += [f"added after: {n}" for n in after if n not in before]
    for name in before:
        if name not in after:
            continue
        b, a = before[name], after[name]
        for key in sorted(set(b) | set(a)):
            if b.get(key, "<absent>") != a.get(key, "<absent>"):
                lines.append(f"{name}.{key}: {b.get(key, '<absent>')!r} -> {a.get(key, '<absent>')!r}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", help="write the dump here (default: stdout)")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two dumps instead")
    args = p.parse_args(argv)
    if args.compare:
        before, after = (json.load(open(f)) for f in args.compare)
        lines = compare(before, after)
        print("\n".join(lines) if lines else f"identical: {len(before)} trainers, every setting equal")
        return 1 if any(not line.startswith("added after") for line in lines) else 0
    text = json.dumps(dump(), indent=1, sort_keys=True)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
