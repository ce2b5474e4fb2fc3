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

from fomo_nnunet.tasks import SEGMENTATION
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
    from fomo_nnunet.models.network_record import trainer_class

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


# ---- the challenge entry on a brain-sized case, timed as a whole process -------------------------
def prepare_entry_timing(work: str | os.PathLike, arch: str, tasks, template: str | None = None,
                         num_processes: int = 1) -> tuple["os.PathLike", dict[int, list[str]]]:
    """In WORK (with nnU-Net's variables pointing inside it): a 1 mm brain-sized case (the MNI152 T1 template
    nilearn ships, 197x233x189, or `template`), tiny raw datasets of it for `tasks`, plans transferred from an
    UNTRAINED checkpoint of the architecture preset, untrained model folders and a bundle. Returns the bundle
    and, per task, the entry's input arguments. Untrained weights time exactly like trained ones."""
    import json
    from pathlib import Path

    import nibabel as nib
    import numpy as np

    from fomo_nnunet.challenge.bundle import build_bundle
    from fomo_nnunet.models.checkpoints import metadata_from_preset
    from fomo_nnunet.plans.transfer_planner import plan_transfer
    from fomo_nnunet.tasks import TASKS_BY_NUMBER
    from fomo_nnunet.models.transfer import PretrainMetadata

    work = Path(work)
    if template:
        image = nib.load(template)
    else:
        from nilearn.datasets import load_mni152_template

        image = load_mni152_template(resolution=1)
    brain = np.asanyarray(image.dataobj).astype(np.float32)
    affine = image.affine
    case_dir = work / "case"
    case_dir.mkdir(parents=True, exist_ok=True)

    ckpt = work / f"untrained_{arch}.pth"
    if not ckpt.is_file():
        meta = metadata_from_preset(arch)
        meta["objective"] = "none (untrained, for timing)"
        torch.manual_seed(0)
        net = PretrainMetadata.from_dict(meta).build_network(num_outputs=1)
        torch.save({"network_weights": net.state_dict(), "fomo_metadata": meta}, ckpt)

    models, case_args = {}, {}
    for n in tasks:
        task = TASKS_BY_NUMBER[n]
        raw = Path(os.environ["nnUNet_raw"]) / task.dataset_name
        files = {}
        for c, channel in enumerate(task.channels):
            f = case_dir / f"{channel.cli_args[-1]}.nii.gz"
            if not f.is_file():
                nib.save(nib.Nifti1Image(brain * (1 + 0.1 * c), affine), f)
            files[channel.cli_args[-1]] = f
        case_args[n] = [x for a, f in files.items() for x in (f"--{a}", str(f))]
        if not (raw / "dataset.json").is_file():
            for split in ("imagesTr", "labelsTr"):
                (raw / split).mkdir(parents=True, exist_ok=True)
            mask = (brain > 0).astype(np.uint8)
            if task.kind == SEGMENTATION:  # any foreground will do
                mask = np.zeros_like(mask)
                mask[90:100, 110:120, 80:90] = task.max_label
            for i in range(2):  # nnU-Net's fingerprint wants cases; two copies of the one volume do
                for c, f in enumerate(files.values()):
                    os.link(f, raw / "imagesTr" / f"case{i}_{c:04d}.nii.gz")
                nib.save(nib.Nifti1Image(mask, affine), raw / "labelsTr" / f"case{i}.nii.gz")
            labels = task.labels if task.kind == SEGMENTATION else {"background": 0, "brain": 1}
            (raw / "dataset.json").write_text(json.dumps({
                "channel_names": {str(i): c for i, c in enumerate(task.channel_names)}, "labels": labels,
                "numTraining": 2, "file_ending": ".nii.gz", "fomo_task": n}))
            (raw / "targets.json").write_text(json.dumps({"case0": 0, "case1": 1}))
            plan_transfer(task.default_dataset_id, str(ckpt), num_processes=num_processes)
        models[n] = write_untrained_model(Path(os.environ["nnUNet_preprocessed"]) / task.dataset_name,
                                          os.environ["nnUNet_results"])
    bundle = work / "bundle"
    build_bundle(bundle, models, str(ckpt) if any(n in (6, 7) for n in tasks) else None)
    return bundle, case_args


def parse_entry_timing(stderr: str) -> dict[str, float]:
    """The `fomo-nnunet fomo26 --verbose` timing line as {step: seconds} (without its total)."""
    line = next(ln for ln in stderr.splitlines() if "timing:" in ln).split("timing:", 1)[1]
    steps = {}
    for part in line.split(","):
        name, seconds, _unit = part.strip().rsplit(" ", 2)
        if name != "total":
            steps[name] = float(seconds)
    return steps
