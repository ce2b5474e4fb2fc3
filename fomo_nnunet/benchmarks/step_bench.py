"""Training steps of nnUNetTrainerFomoMAE and nnU-Net's nnUNetTrainer under each speed setting, on one set of
plans and the same batches: seconds per step, FLOPs (torch.utils.flop_counter), share of the GPU's peak, peak
memory, and whether the loss over the first steps follows eager fp16's.

The plans are written in memory from an architecture preset, patch, spacing and batch (no dataset needed);
nnU-Net's `initialize` reads the preprocessed folder to choose its dataset class, so one random case is saved
there. Batches are random volumes inside a sphere (the "brain"); the network weights start from one seed for
every setting of a trainer, and the MAE masks from one seed, so the loss curves compare step by step.
"""
from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fomo_nnunet.training.fast import Settings, StepSettings, step_precision

STEP_DATASET = "Dataset949_CampaignSteps"
STEP_PLANS = "campaignStepPlans"
IDENTIFIER = "campaignStepPlans_3d_fullres"
MAE, NNUNET = "nnUNetTrainerFomoMAE", "nnUNetTrainer"
# max |loss - eager fp16's loss| / |eager fp16's loss| over the first steps: bf16 keeps 8 bits of mantissa
# (about 0.4 %), and a few optimiser steps amplify that; a broken kernel (NaN, garbage) lands far outside
LOSS_TOLERANCE = 0.05
EAGER_FP16 = Settings("float16", False, False)
# in the order of value: nnU-Net's eager default and bf16 for both trainers, then the layout, then compiled
# (about 100 s of compiling each for resenc_b on an H200, so the last may not fit)
VARIANTS = (
    (MAE, EAGER_FP16), (MAE, Settings("bfloat16", False, False)),
    (NNUNET, EAGER_FP16), (NNUNET, Settings("bfloat16", False, False)),
    (MAE, Settings("bfloat16", False, True)),
    (MAE, Settings("float16", True, False)),       # what nnUNetTrainerFomoMAE runs on a GPU today
    (MAE, Settings("bfloat16", True, False)),
    (NNUNET, Settings("float16", True, False)),    # nnU-Net's default on a GPU
    (MAE, Settings("bfloat16", True, True)),
)


# NVIDIA's data sheets, dense bf16 tensor-core TFLOP/s (without sparsity), by a part of torch's device name;
# the first match counts. Other GPUs: no share of the peak is given.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("NVL", None), ("H200", 989.4), ("H100", 989.4), ("A100", 312.0))


def peak_bf16_tflops(device_name: str) -> float | None:
    for part, peak in PEAK_BF16_TFLOPS:
        if part in device_name:
            return peak
    return None


def step_plans(arch: str, patch: int, spacing: float, batch: int) -> dict:
    """A standard plans dict with one 3d_fullres configuration of the preset's network (single channel)."""
    from fomo_nnunet.plans.presets import ARCH_PRESETS, CONFIGURATION, architecture_dict

    resampling = "resample_data_or_seg_to_shape"
    data_kwargs = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    configuration = {
        "data_identifier": IDENTIFIER, "preprocessor_name": "DefaultPreprocessor", "batch_size": batch,
        "patch_size": [patch] * 3, "median_image_size_in_voxels": [float(patch)] * 3, "spacing": [spacing] * 3,
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [True],
        "resampling_fn_data": resampling, "resampling_fn_seg": resampling, "resampling_fn_probabilities": resampling,
        "resampling_fn_data_kwargs": data_kwargs,
        "resampling_fn_seg_kwargs": {**data_kwargs, "is_seg": True, "order": 1},
        "resampling_fn_probabilities_kwargs": {**data_kwargs, "order": 1},
        "architecture": architecture_dict(ARCH_PRESETS[arch], (patch,) * 3, (spacing,) * 3), "batch_dice": False}
    intensity = {"max": 4.0, "mean": 0.0, "median": 0.0, "min": -4.0, "percentile_00_5": -3.0,
                 "percentile_99_5": 3.0, "std": 1.0}
    return {"dataset_name": STEP_DATASET, "plans_name": STEP_PLANS, "original_median_spacing_after_transp": [spacing] * 3,
            "original_median_shape_after_transp": [patch] * 3, "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {CONFIGURATION: configuration}, "experiment_planner_used": "fomo_nnunet.benchmarks.step_bench",
            "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {"0": intensity},
            "fomo": {"role": "pretraining", "arch_preset": arch}}


DATASET_JSON = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "brain": 1}, "numTraining": 1,
                "file_ending": ".nii.gz"}


def sphere(patch: int) -> np.ndarray:
    r = np.linspace(-1, 1, patch)
    return (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2 < 0.8).astype(np.float32)


def write_step_dataset(preprocessed: Path, patch: int) -> None:
    """The one case nnU-Net's `initialize` looks at to choose its dataset class (never read for the steps)."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetNumpy

    folder = preprocessed / STEP_DATASET / IDENTIFIER
    folder.mkdir(parents=True, exist_ok=True)
    brain = sphere(patch)[None]
    nnUNetDatasetNumpy.save_case(brain, brain.astype(np.int8), {"spacing": [1.0] * 3}, str(folder / "case0"))


def make_batches(trainer_name: str, patch: int, batch: int, n: int, ds_scales, pin: bool, seed: int = 0) -> list:
    """`n` batches as each trainer's loader delivers them: MAE {data, target [brain mask, clean image]};
    nnU-Net {data, target [the label map at every deep-supervision scale]}."""
    g = torch.Generator().manual_seed(seed)
    brain = torch.from_numpy(sphere(patch))[None, None].expand(batch, 1, -1, -1, -1).contiguous()
    out = []
    for _ in range(n):
        data = torch.randn((batch, 1, patch, patch, patch), generator=g) * brain
        if trainer_name == MAE:
            target = [brain.clone(), data.clone()]
        else:
            target = [brain.clone() if s is None else torch.nn.functional.interpolate(
                brain, size=[int(round(patch * f)) for f in s], mode="nearest") for s in ds_scales]
        b = {"data": data, "target": target}
        if pin:
            b = {"data": b["data"].pin_memory(), "target": [t.pin_memory() for t in b["target"]]}
        out.append(b)
    return out


def trainer_with(trainer_name: str, settings: Settings):
    """The trainer class with `settings` as its class attributes (StepSettings; nnU-Net's trainer gets the mixin)."""
    from fomo_nnunet.models.network_record import trainer_class

    base = trainer_class(trainer_name)
    bases = (base,) if issubclass(base, StepSettings) else (StepSettings, base)
    return type(f"{trainer_name}_campaign", bases, {"autocast_dtype": settings.autocast_dtype,
                                                    "compile_network": settings.compile_network,
                                                    "channels_last": settings.channels_last})


def loss_check(losses: list[float], reference: list[float], steps: int, tolerance: float = LOSS_TOLERANCE) -> dict:
    """How far a loss curve strays from the reference's over the first `steps` steps (relative)."""
    n = min(steps, len(losses), len(reference))
    diffs = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses[:n], reference[:n])]
    worst = max(diffs) if diffs and all(np.isfinite(losses[:n])) else float("inf")
    return {"steps": n, "max_relative_difference": worst, "tolerance": tolerance,
            "within_tolerance": bool(worst <= tolerance)}


def count_step_flops(trainer, batch: dict) -> float:
    """FLOPs of one whole training step (forward and backward) by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step(batch)
    return float(counter.get_total_flops())


def matmul_bf16_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """A large bf16 matrix product's rate on random data: the ceiling this GPU reaches in practice."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e12


class StepBench:
    def __init__(self, work: Path, sizes, device: str):
        self.work, self.sizes, self.device = Path(work), sizes, torch.device(device)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _trainer(self, name: str, settings: Settings):
        plans = step_plans(self.sizes.step_arch, self.sizes.step_patch, self.sizes.step_spacing, self.sizes.step_batch)
        plans["continue_training"] = False  # nnU-Net's trainer pops this (run_training puts it there)
        trainer = trainer_with(name, settings)(plans, "3d_fullres", 0, DATASET_JSON, self.device)
        torch.manual_seed(0)  # the same initial weights for every setting of a trainer
        trainer.initialize()
        if hasattr(trainer, "start_random_streams"):  # the MAE masks: the same stream for every setting
            trainer.start_random_streams()
        trainer.network.train()
        return trainer

    def run(self, w, deadline: float) -> None:
        import os

        write_step_dataset(Path(os.environ["nnUNet_preprocessed"]), self.sizes.step_patch)
        s = self.sizes
        peak = None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as nnU-Net's run_training on CUDA
            peak = peak_bf16_tflops(torch.cuda.get_device_name(0))
            w.set(matmul_bf16_tflops=matmul_bf16_tflops(self.device))
        w.set(plans=f"{s.step_arch}, patch {s.step_patch}^3 at {s.step_spacing} mm, batch {s.step_batch}",
              note=f"{s.warmup_steps} warm-up steps, median of {s.timed_steps}; batches {'in pinned memory' if self.device.type == 'cuda' else 'in memory'}, loading "
                   f"not counted; the loss check compares the first {s.check_steps} steps with eager fp16's "
                   f"(relative tolerance {LOSS_TOLERANCE})", peak_bf16_tflops=peak)
        n_steps = s.warmup_steps + s.timed_steps
        references: dict[str, list[float]] = {}
        flops: dict[str, float] = {}
        batches: dict[str, list] = {}
        last_cost = {False: 0.0, True: 0.0}
        for name, settings in VARIANTS:
            compiled = bool(settings.compile_network)
            if compiled and self.device.type == "cpu":
                w.add({"trainer": name, "setting": settings.label, "status": "skipped on a CPU: inductor's C++ "
                       "compile takes minutes there and the fomo networks' oneDNN convolutions (CPU only) do not "
                       "trace; nnU-Net never compiles on a CPU"})
                continue
            if time.monotonic() + last_cost[compiled] > deadline:
                w.add({"trainer": name, "setting": settings.label, "status": "not reached before the deadline"})
                continue
            t0 = time.monotonic()
            try:
                figure = self._variant(name, settings, batches, n_steps, references, flops, peak, deadline)
            except Exception as e:  # one failing setting (a compiler error, say) must not cost the others
                figure = {"trainer": name, "setting": settings.label, "status": f"failed: {type(e).__name__}: {e}"}
            last_cost[compiled] = time.monotonic() - t0
            w.add(figure)
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if compiled:
                torch._dynamo.reset()

    def _variant(self, name, settings, batches, n_steps, references, flops, peak, deadline) -> dict:
        s = self.sizes
        trainer = self._trainer(name, settings)
        if name not in batches:
            scales = None if name == MAE else trainer._get_deep_supervision_scales()
            batches[name] = make_batches(name, s.step_patch, s.step_batch, min(4, n_steps), scales,
                                         pin=self.device.type == "cuda")
        pool = batches[name]
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times, losses = [], []
        for i in range(n_steps):
            batch = pool[i % len(pool)]
            self._sync()
            t0 = time.perf_counter()
            losses.append(float(trainer.train_step(batch)["loss"]))
            self._sync()
            times.append(time.perf_counter() - t0)
            if time.monotonic() > deadline and i >= s.warmup_steps:
                break
        timed = times[s.warmup_steps:] or times[-1:]
        step = statistics.median(timed)
        figure = {"trainer": name, "setting": settings.label, "precision": step_precision(self.device,
                                                                                         settings.autocast_dtype),
                  "compile": bool(settings.compile_network), "channels_last": settings.channels_last,
                  "step_seconds": step, "steps_timed": len(timed), "first_step_seconds": times[0],
                  "losses": losses}
        if settings.compile_network:
            figure["compile_seconds"] = max(0.0, times[0] - step)
        if self.device.type == "cuda":
            figure["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        if settings == EAGER_FP16:
            references[name] = losses
            flops[name] = count_step_flops(trainer, pool[0])  # after the timed steps: the curve is not touched
        elif name in references:
            figure["loss_check"] = loss_check(losses, references[name], s.check_steps)
        if name in flops:
            figure["tflop_per_step"] = flops[name] / 1e12
            figure["tflops"] = flops[name] / step / 1e12
            figure["share_of_peak"] = None if peak is None else figure["tflops"] / peak
        del trainer
        return figure
