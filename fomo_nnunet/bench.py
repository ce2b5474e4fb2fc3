"""Throughput of MAE pretraining against nnU-Net's own segmentation trainer, on the same plans.

Two figures, measured in one process on one dataset, plans and patch size:
- step time: forward + backward + optimiser step on batches already in memory (loading excluded),
  for nnUNetTrainerFomoMAE and for nnU-Net's nnUNetTrainer;
- loader throughput: samples per second each trainer's own training data pipeline delivers.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass

import torch

from fomo_nnunet.trainer_checks import TRAINER_FOR_KIND


@dataclass
class PipelineFigures:
    trainer: str
    step_seconds_median: float
    step_seconds_mean: float
    loader_samples_per_second: float
    batch_size: int
    patch_size: list[int]


def _make_trainer(name: str, dataset_id: int, plans_name: str, configuration: str, device: torch.device):
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(str(dataset_id), configuration, "all", name, plans_name, device=device)
    trainer.initialize()
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    trainer.dataset_class.unpack_dataset(trainer.preprocessed_dataset_folder, overwrite_existing=False,
                                         num_processes=1, verify=True)
    if hasattr(trainer, "start_random_streams"):  # the MAE trainer's mask (and skip-drop) generators
        trainer.start_random_streams()
    trainer.on_train_epoch_start()
    return trainer


def _shutdown(trainer) -> None:
    for dl in (trainer.dataloader_train, trainer.dataloader_val):
        if hasattr(dl, "_finish"):
            dl._finish()


def _time_loader(trainer, n_batches: int) -> float:
    # drain what the workers cached while the trainer started, so the timing is the production rate
    for _ in range(2 * getattr(trainer.dataloader_train, "num_cached", 1) + 1):
        next(trainer.dataloader_train)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(trainer.dataloader_train)
    return n_batches * trainer.batch_size / (time.perf_counter() - t0)


def _time_steps(trainer, batches: list[dict], warmup: int) -> list[float]:
    times = []
    for i, batch in enumerate(batches):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.train_step(batch)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def bench_pretrain(dataset_id: int, plans_name: str = "fomoPretrainPlans", configuration: str = "3d_fullres",
                   mae_trainer: str = "nnUNetTrainerFomoMAE", baseline_trainer: str = "nnUNetTrainer",
                   steps: int = 20, warmup: int = 3, loader_batches: int = 40, device: str = "cpu") -> dict:
    """Time both trainers; step batches are pulled first so loading does not count as step time."""
    dev = torch.device(device)
    results_before = os.environ.get("nnUNet_results")
    with tempfile.TemporaryDirectory(prefix="fomo_bench_") as scratch:
        # trainers write logs into nnUNet_results; keep the user's results folder clean
        os.environ["nnUNet_results"] = scratch
        try:
            figures = []
            for name in (mae_trainer, baseline_trainer):
                trainer = _make_trainer(name, dataset_id, plans_name, configuration, dev)
                try:
                    loader_sps = _time_loader(trainer, loader_batches)
                    batches = [next(trainer.dataloader_train) for _ in range(steps + warmup)]
                    times = _time_steps(trainer, batches, warmup)
                finally:
                    _shutdown(trainer)
                figures.append(PipelineFigures(name, statistics.median(times), statistics.mean(times), loader_sps,
                                               int(trainer.batch_size),
                                               [int(p) for p in trainer.configuration_manager.patch_size]))
        finally:
            if results_before is None:
                os.environ.pop("nnUNet_results", None)
            else:
                os.environ["nnUNet_results"] = results_before
    mae, base = figures
    return {
        "device": str(dev), "dataset_id": dataset_id, "plans": plans_name, "steps_timed": steps,
        "mae": asdict(mae), "baseline": asdict(base),
        "step_ratio_mae_over_baseline": mae.step_seconds_median / base.step_seconds_median,
        "loader_ratio_mae_over_baseline": mae.loader_samples_per_second / base.loader_samples_per_second,
        "data_augmentation_processes": os.environ.get("nnUNet_n_proc_DA", "nnU-Net default"),
    }


def format_report(r: dict) -> str:
    m, b = r["mae"], r["baseline"]
    lines = [
        f"device {r['device']}, plans {r['plans']}, patch {m['patch_size']}, batch {m['batch_size']}, "
        f"{r['steps_timed']} timed steps, augmentation processes: {r['data_augmentation_processes']}",
        f"{'trainer':<28}{'step s (median)':>17}{'step s (mean)':>15}{'loader samples/s':>18}",
        f"{m['trainer']:<28}{m['step_seconds_median']:>17.3f}{m['step_seconds_mean']:>15.3f}"
        f"{m['loader_samples_per_second']:>18.1f}",
        f"{b['trainer']:<28}{b['step_seconds_median']:>17.3f}{b['step_seconds_mean']:>15.3f}"
        f"{b['loader_samples_per_second']:>18.1f}",
        f"MAE step / nnU-Net step: {r['step_ratio_mae_over_baseline']:.3f} (target <= 1.10)",
        f"MAE loader / nnU-Net loader: {r['loader_ratio_mae_over_baseline']:.3f} (target >= 1.00)",
    ]
    return "\n".join(lines)


# ---- untrained models of the real size, for timing the challenge entry ---------------------------


def write_untrained_model(preprocessed_dataset: str | os.PathLike, results_folder: str | os.PathLike,
                          plans_name: str = "fomoPlans", seed: int = 0) -> str:
    """A results folder (plans.json, dataset.json, fold_all/checkpoint_final.pth) holding the network
    the plans describe with its initial weights, as the task's trainer would build it. For timing
    and for testing the I/O of prediction; the predictions mean nothing."""
    import json

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from fomo_nnunet.image_level import task_from_plans
    from fomo_nnunet.network_record import trainer_class

    pre = os.fspath(preprocessed_dataset)
    with open(os.path.join(pre, f"{plans_name}.json")) as f:
        plans = json.load(f)
    with open(os.path.join(pre, "dataset.json")) as f:
        dataset = json.load(f)
    trainer = TRAINER_FOR_KIND[task_from_plans(plans).kind]
    model = os.path.join(os.fspath(results_folder), plans["dataset_name"], f"{trainer}__{plans_name}__3d_fullres")
    os.makedirs(os.path.join(model, "fold_all"), exist_ok=True)
    for name, content in (("plans.json", plans), ("dataset.json", dataset)):
        with open(os.path.join(model, name), "w") as f:
            json.dump(content, f, indent=1)
    pm = PlansManager(plans)
    torch.manual_seed(seed)
    net = trainer_class(trainer).build_network_architecture(
        pm, pm.get_configuration("3d_fullres"), len(dataset["channel_names"]),
        pm.get_label_manager(dataset).num_segmentation_heads, False)
    torch.save({"network_weights": net.state_dict(), "trainer_name": trainer,
                "init_args": {"configuration": "3d_fullres", "fold": "all"},
                "inference_allowed_mirroring_axes": (0, 1, 2), "current_epoch": 0},
               os.path.join(model, "fold_all", "checkpoint_final.pth"))
    return model
