"""The FOMO-Synth benchmark: synthesize, convert, plan, preprocess, pretrain ONE checkpoint, then
finetune it and its from-scratch twin on each task, predict the out-of-domain test split and score.

Every step is a command a user could type (nnU-Net's own where nnU-Net has one); the chain is
resumable (fomo_nnunet.pipeline) and seeded, so a rerun skips finished steps and gives the same
numbers.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from fomo_nnunet.pipeline import Pipeline
from fomo_nnunet.tasks import PRETRAIN_DATASET_ID, SEGMENTATION, TASKS_BY_NUMBER, Task


@dataclass(frozen=True)
class BenchmarkPreset:
    name: str
    synth_preset: str
    arch: str
    pretrain_trainer: str
    seg_trainer: str            # the _scratch twin is this name + "_scratch"
    tasks: tuple[int, ...] = (2, 4)
    folds: tuple[str, ...] = ("all",)
    extra_plan_args: tuple[str, ...] = field(default_factory=tuple)


PRESETS = {p.name: p for p in (
    BenchmarkPreset("tiny", "tiny", "tiny", "nnUNetTrainerFomoMAE_tiny", "nnUNetTrainerFomoSeg_tiny"),
    BenchmarkPreset("small", "small", "tiny", "nnUNetTrainerFomoMAE_tiny", "nnUNetTrainerFomoSeg_tiny",
                    extra_plan_args=("--spacing", "2.0", "--patch", "64")),
    BenchmarkPreset("full", "full", "resenc_b", "nnUNetTrainerFomoMAE", "nnUNetTrainerFomoSeg"),
)}


class Benchmark:
    def __init__(self, work: str | os.PathLike, preset: str = "tiny", seed: int = 0, num_processes: int = 2,
                 log=print):
        self.p = PRESETS[preset]
        self.seed = seed
        self.np = str(num_processes)
        self.pipe = Pipeline(work, log=log)
        self.work = self.pipe.work
        self.log = log
        self.synth_dir = self.work / "synth"
        self.raw = Path(self.pipe.env["nnUNet_raw"])
        self.pre = Path(self.pipe.env["nnUNet_preprocessed"])
        self.results = Path(self.pipe.env["nnUNet_results"])

    # ---- data -----------------------------------------------------------------------------------
    def synthesize(self) -> None:
        self.pipe.step("synth", lambda: self.pipe.run(
            ["fomo-nnunet", "synth", "-o", str(self.synth_dir), "--preset", self.p.synth_preset,
             "--seed", str(self.seed), "-np", self.np]) and None)

    def convert(self, tasks: tuple[int, ...]) -> None:
        self.pipe.step("convert_pretrain", lambda: self.pipe.run(
            ["fomo-nnunet", "convert", "pretrain", str(self.synth_dir / "pretrain"), "-d", str(PRETRAIN_DATASET_ID),
             "-np", self.np]) and None)
        for n in tasks:
            t = TASKS_BY_NUMBER[n]
            self.pipe.step(f"convert_{t.key}", lambda t=t: self.pipe.run(
                ["fomo-nnunet", "convert", "task", t.key, str(self.synth_dir / "finetune" / t.key),
                 "-d", str(t.default_dataset_id), "-np", self.np]) and None)

    # ---- pretraining ----------------------------------------------------------------------------
    def pretrain(self) -> Path:
        d = str(PRETRAIN_DATASET_ID)
        self.pipe.step("plan_pretrain", lambda: self.pipe.run(
            ["fomo-nnunet", "plan", "pretrain", "-d", d, "--arch", self.p.arch, "-np", self.np,
             *self.p.extra_plan_args]) and None)
        self.pipe.step("preprocess_pretrain", lambda: self.pipe.run(
            ["nnUNetv2_preprocess", "-d", d, "-plans_name", "fomoPretrainPlans", "-c", "3d_fullres",
             "-np", self.np]) and None)
        self.pipe.step("pretrain", lambda: self.pipe.run(
            ["nnUNetv2_train", d, "3d_fullres", "all", "-p", "fomoPretrainPlans", "-tr", self.p.pretrain_trainer,
             "-device", "cpu"]) and None)
        return self.pretrain_folder()

    def pretrain_folder(self) -> Path:
        name = next(self.results.glob(f"Dataset{PRETRAIN_DATASET_ID:03d}_*")).name
        return self.results / name / f"{self.p.pretrain_trainer}__fomoPretrainPlans__3d_fullres"

    # ---- segmentation tasks ---------------------------------------------------------------------
    def dataset_name(self, task: Task) -> str:
        return next(self.raw.glob(f"Dataset{task.default_dataset_id:03d}_*")).name

    def segmentation(self, task: Task, pretrained: Path) -> dict:
        d = str(task.default_dataset_id)
        self.pipe.step(f"plan_{task.key}", lambda: self.pipe.run(
            ["fomo-nnunet", "plan", "transfer", "-d", d, "--pretrained", str(pretrained), "-np", self.np]) and None)
        self.pipe.step(f"preprocess_{task.key}", lambda: self.pipe.run(
            ["nnUNetv2_preprocess", "-d", d, "-plans_name", "fomoPlans", "-c", "3d_fullres", "-np", self.np])
            and None)
        scores = {}
        for variant, trainer in (("pretrained", self.p.seg_trainer), ("scratch", self.p.seg_trainer + "_scratch")):
            for fold in self.p.folds:
                self.pipe.step(f"train_{task.key}_{variant}_fold{fold}", lambda trainer=trainer, fold=fold:
                               self.pipe.run(["nnUNetv2_train", d, "3d_fullres", fold, "-p", "fomoPlans",
                                              "-tr", trainer, "-device", "cpu"]) and None)
            out = self.work / "predictions" / task.key / variant
            self.pipe.step(f"predict_{task.key}_{variant}", lambda trainer=trainer, out=out: self.pipe.run(
                ["nnUNetv2_predict", "-i", str(self.raw / self.dataset_name(task) / "imagesTs"), "-o", str(out),
                 "-d", d, "-c", "3d_fullres", "-p", "fomoPlans", "-tr", trainer, "-f", *self.p.folds,
                 "-device", "cpu", "-npp", "1", "-nps", "1"]) and None)
            scores[variant] = self.pipe.step(f"evaluate_{task.key}_{variant}",
                                             lambda out=out: self.evaluate(task, out))["result"]
        return scores

    def evaluate(self, task: Task, pred: Path) -> dict:
        from fomo_nnunet.metrics import evaluate_task

        gt = self.raw / self.dataset_name(task) / "labelsTs"
        out = pred.parent / f"{pred.name}_scores"
        out.mkdir(parents=True, exist_ok=True)
        rows, summary = evaluate_task(task, pred, gt)
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
        return summary

    # ---- the whole story ------------------------------------------------------------------------
    def run(self) -> dict:
        tasks = self.p.tasks
        self.synthesize()
        self.convert(tasks)
        pretrained = self.pretrain()
        results = {}
        for n in tasks:
            task = TASKS_BY_NUMBER[n]
            if task.kind == SEGMENTATION:
                results[task.key] = self.segmentation(task, pretrained)
        return results
