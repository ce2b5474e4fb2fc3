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
from fomo_nnunet.tasks import (CLASSIFICATION, EMBEDDING, PRETRAIN_DATASET_ID, REGRESSION, SEGMENTATION,
                               TASKS_BY_NUMBER, Task)


@dataclass(frozen=True)
class BenchmarkPreset:
    name: str
    synth_preset: str
    arch: str
    pretrain_trainer: str
    seg_trainer: str            # the _scratch twin is this name + "_scratch"
    cls_trainer: str
    reg_trainer: str
    tasks: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)
    folds: tuple[str, ...] = ("all",)
    extra_plan_args: tuple[str, ...] = field(default_factory=tuple)


PRESETS = {p.name: p for p in (
    BenchmarkPreset("tiny", "tiny", "tiny", "nnUNetTrainerFomoMAE_tiny", "nnUNetTrainerFomoSeg_tiny",
                    "nnUNetTrainerFomoCls_tiny", "nnUNetTrainerFomoReg_tiny"),
    BenchmarkPreset("small", "small", "tiny", "nnUNetTrainerFomoMAE_tiny", "nnUNetTrainerFomoSeg_tiny",
                    "nnUNetTrainerFomoCls_tiny", "nnUNetTrainerFomoReg_tiny",
                    extra_plan_args=("--spacing", "2.0", "--patch", "64")),
    BenchmarkPreset("full", "full", "resenc_b", "nnUNetTrainerFomoMAE", "nnUNetTrainerFomoSeg",
                    "nnUNetTrainerFomoCls", "nnUNetTrainerFomoReg"),
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

    # ---- finetuned tasks (segmentation, classification, regression) ------------------------------
    def dataset_name(self, task: Task) -> str:
        return next(self.raw.glob(f"Dataset{task.default_dataset_id:03d}_*")).name

    def trainer_for(self, task: Task) -> str:
        return {SEGMENTATION: self.p.seg_trainer, CLASSIFICATION: self.p.cls_trainer,
                REGRESSION: self.p.reg_trainer}[task.kind]

    def finetune(self, task: Task, pretrained: Path) -> dict:
        d = str(task.default_dataset_id)
        self.pipe.step(f"plan_{task.key}", lambda: self.pipe.run(
            ["fomo-nnunet", "plan", "transfer", "-d", d, "--pretrained", str(pretrained), "-np", self.np]) and None)
        self.pipe.step(f"preprocess_{task.key}", lambda: self.pipe.run(
            ["nnUNetv2_preprocess", "-d", d, "-plans_name", "fomoPlans", "-c", "3d_fullres", "-np", self.np])
            and None)
        images = self.raw / self.dataset_name(task) / "imagesTs"
        scores = {}
        base = self.trainer_for(task)
        for variant, trainer in (("pretrained", base), ("scratch", base + "_scratch")):
            for fold in self.p.folds:
                self.pipe.step(f"train_{task.key}_{variant}_fold{fold}", lambda trainer=trainer, fold=fold:
                               self.pipe.run(["nnUNetv2_train", d, "3d_fullres", fold, "-p", "fomoPlans",
                                              "-tr", trainer, "-device", "cpu"]) and None)
            out = self.work / "predictions" / task.key / variant
            model = self.results / self.dataset_name(task) / f"{trainer}__fomoPlans__3d_fullres"
            if task.kind == SEGMENTATION:
                cmd = ["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", d, "-c", "3d_fullres",
                       "-p", "fomoPlans", "-tr", trainer, "-f", *self.p.folds, "-device", "cpu",
                       "-npp", "1", "-nps", "1"]
                pred, gt = out, self.raw / self.dataset_name(task) / "labelsTs"
            else:
                cmd = ["fomo-nnunet", "predict", "-i", str(images), "-o", str(out), "-m", str(model),
                       "-f", *self.p.folds]
                pred, gt = out / "predictions.csv", self.raw / self.dataset_name(task) / "targetsTs.json"
            self.pipe.step(f"predict_{task.key}_{variant}", lambda cmd=cmd: self.pipe.run(cmd) and None)
            scores[variant] = self.pipe.step(f"evaluate_{task.key}_{variant}",
                                             lambda pred=pred, gt=gt, out=out: self.evaluate(task, pred, gt, out))
        return {v: r["result"] for v, r in scores.items()}

    def evaluate(self, task: Task, pred: Path, gt: Path, out: Path) -> dict:
        scores = out.parent / f"{out.name}_scores"
        self.pipe.run(["fomo-nnunet", "evaluate", task.key, "--pred", str(pred), "--gt", str(gt),
                       "-o", str(scores)])
        return json.loads((scores / "summary.json").read_text())

    # ---- embedding tasks (6, 7): a linear probe on frozen features ------------------------------
    def probe(self, task: Task, pretrained: Path) -> dict:
        from fomo_nnunet.checkpoints import find_checkpoint

        name = self.dataset_name(task)
        folder = self.raw / name
        table = self.work / "probe" / task.key / "labels.tsv"
        self.pipe.step(f"labels_{task.key}", lambda: write_probe_table(folder, table) and None)
        random_init = self.work / "probe" / "random_init_encoder.pth"
        self.pipe.step("random_init_encoder", lambda: save_random_init(find_checkpoint(pretrained), random_init,
                                                                       self.seed) and None)
        scores = {}
        for variant, ckpt in (("pretrained", find_checkpoint(pretrained)), ("scratch", str(random_init))):
            emb = self.work / "probe" / task.key / f"embeddings_{variant}"
            for split in ("imagesTr", "imagesTs"):
                self.pipe.step(f"embed_{task.key}_{variant}_{split}", lambda split=split, emb=emb, ckpt=ckpt:
                               self.pipe.run(["fomo-nnunet", "embed", "-i", str(folder / split), "-o", str(emb),
                                              "--checkpoint", ckpt]) and None)
            out = self.work / "probe" / task.key / f"probe_{variant}"
            cmd = ["fomo-nnunet", "probe", str(emb), "--labels", str(table), "--seed", str(self.seed), "-o", str(out)]
            if task.number == 7:
                cmd += ["--groups", "sex"]
            self.pipe.step(f"probe_{task.key}_{variant}", lambda cmd=cmd: self.pipe.run(cmd) and None)
            scores[variant] = json.loads((out / "probe.json").read_text())
        return scores

    # ---- the whole story ------------------------------------------------------------------------
    def run(self) -> dict:
        tasks = self.p.tasks
        self.synthesize()
        self.convert(tasks)
        pretrained = self.pretrain()
        results = {}
        for n in tasks:
            task = TASKS_BY_NUMBER[n]
            results[task.key] = self.probe(task, pretrained) if task.kind == EMBEDDING else \
                self.finetune(task, pretrained)
        return results


def write_probe_table(dataset_folder: Path, table: Path) -> None:
    """case_id, label and attribute columns for the probe, from the converter's targets and attributes."""
    targets = {}
    for name in ("targets.json", "targetsTs.json"):
        f = dataset_folder / name
        if f.is_file():
            targets.update(json.loads(f.read_text()))
    attributes = json.loads((dataset_folder / "attributes.json").read_text()) \
        if (dataset_folder / "attributes.json").is_file() else {}
    columns = sorted({k for a in attributes.values() for k in a} - {"label", "case_id"})
    table.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(["case_id", "label", *columns])]
    for case, label in sorted(targets.items()):
        lines.append("\t".join([case, str(label), *(str(attributes.get(case, {}).get(c, "")) for c in columns)]))
    table.write_text("\n".join(lines) + "\n")


def save_random_init(pretrained_checkpoint: str, out: Path, seed: int) -> None:
    """The pretrained network's architecture with random weights: the frozen-feature baseline."""
    import torch

    from fomo_nnunet.transfer import PretrainMetadata, load_checkpoint_safely

    ckpt = load_checkpoint_safely(pretrained_checkpoint)
    meta = PretrainMetadata.from_dict(ckpt["fomo_metadata"])
    torch.manual_seed(seed)
    net = meta.build_network(num_outputs=meta.num_input_channels)
    d = meta.to_dict()
    d["objective"], d["iterations_trained"], d["epochs_trained"] = "none (random initialisation)", 0, 0
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": net.state_dict(), "fomo_metadata": d}, out)
