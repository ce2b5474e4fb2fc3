"""The FOMO-Synth benchmark: synthesize, convert, plan, preprocess, pretrain ONE checkpoint, then
finetune it on each task and train the same trainer from scratch (plans written with `plan transfer
--from-scratch`, which name no checkpoint), predict the out-of-domain test split and score.

Every step is a command a user could type (nnU-Net's own where nnU-Net has one); the chain is
resumable (fomo_nnunet.benchmarks.pipeline): a rerun skips finished steps, and a training cut short continues
from its last checkpoint (`nnUNetv2_train --c`). Repetitions: seed s pretrains and
finetunes both arms with FOMO_SEED=s (fomo_nnunet.seeding), so on a CPU a fresh run in a new folder
gives the same table for the same seeds, and the report states mean, sd and paired differences.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from fomo_nnunet.benchmarks.pipeline import Pipeline
from fomo_nnunet.benchmarks.report import learning_check
from fomo_nnunet.tasks import (CLASSIFICATION, EMBEDDING, PRETRAIN_DATASET_ID, REGRESSION, SEGMENTATION,
                               TASKS_BY_NUMBER, Task)


@dataclass(frozen=True)
class BenchmarkPreset:
    name: str
    synth_preset: str
    arch: str
    pretrain_trainer: str
    seg_trainer: str            # both arms: the from-scratch arm runs it on from-scratch plans
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
    # the tiny data and checkpoint, 3x the finetuning steps: does the comparison change with a longer budget?
    BenchmarkPreset("tiny-long", "tiny", "tiny", "nnUNetTrainerFomoMAE_tiny", "nnUNetTrainerFomoSeg_tiny_long",
                    "nnUNetTrainerFomoCls_tiny_long", "nnUNetTrainerFomoReg_tiny_long"),
    # a handful of iterations per step: proves the chain and the report in CI, the numbers mean nothing
    BenchmarkPreset("smoke", "tiny", "tiny", "nnUNetTrainerFomoMAE_tiny_smoke", "nnUNetTrainerFomoSeg_tiny_smoke",
                    "nnUNetTrainerFomoCls_tiny_smoke", "nnUNetTrainerFomoReg_tiny_smoke"),
    BenchmarkPreset("full", "full", "resenc_b", "nnUNetTrainerFomoMAE", "nnUNetTrainerFomoSeg",
                    "nnUNetTrainerFomoCls", "nnUNetTrainerFomoReg"),
)}


TASK_PLANS_DATA = "fomoPlans_3d_fullres"  # the preprocessed task data every seed's plans share
PRETRAINING_RECORD = "pretraining.json"  # in the work folder: the trainer every seed's checkpoint comes from


class Benchmark:
    """The benchmark over repetitions: seed s pretrains and finetunes both arms with FOMO_SEED=s.

    Shared by every seed: the synthetic data (`data_seed`), its conversion, the pretraining plans and
    all preprocessing. Per seed: an nnUNet_results folder (`runs/seed<s>/nnUNet_results`), task plans
    `fomoPlans_seed<s>` (they name that seed's checkpoint, and share one preprocessed data folder),
    predictions and scores. Every step is resumable per seed, so adding seeds later reuses the rest.
    """

    def __init__(self, work: str | os.PathLike, preset: str = "tiny", data_seed: int = 0,
                 seeds: tuple[int, ...] = (0,), num_processes: int = 2, log=print,
                 tasks: tuple[int, ...] | None = None, synth_sizes: tuple[int | None, int | None] | None = None,
                 in_process=None, corpus: tuple[int | None, int | None] = (None, None),
                 pretrain_trainer: str | None = None, adapt: str | None = None,
                 adapt_folds: tuple[int, ...] = (0, 1, 2, 3, 4), pretrain_batch_size: int | None = None):
        if not seeds:
            raise ValueError("give at least one seed")
        self.p = PRESETS[preset]
        if pretrain_trainer:  # another pretraining recipe, finetuned with the preset's trainers
            self.p = replace(self.p, pretrain_trainer=pretrain_trainer)
        self.tasks = tuple(tasks or self.p.tasks)
        # `plan transfer --adapt` for the pretrained arm's plans (None: the trainers' recipes as they are)
        self.adapt, self.adapt_folds = adapt, tuple(adapt_folds)
        self.synth_sizes = synth_sizes
        self.corpus = corpus  # pretraining sources, subjects per source (None: the synth preset's)
        # `plan pretrain --batch-size` (None: the architecture preset's); a folder keeps the batch it planned
        self.pretrain_batch_size = pretrain_batch_size
        self.data_seed = data_seed
        self.seeds = tuple(dict.fromkeys(int(s) for s in seeds))
        self.np = str(num_processes)
        self.pipe = Pipeline(work, log=log, in_process=in_process)
        self.work = self.pipe.work
        self.log = log
        self.synth_dir = self.work / "synth"
        self.raw = Path(self.pipe.env["nnUNet_raw"])
        self.pre = Path(self.pipe.env["nnUNet_preprocessed"])
        self.use_seed(self.seeds[0])

    # ---- repetitions ------------------------------------------------------------------------------
    def use_seed(self, seed: int) -> None:
        """Point the nnU-Net results folder, FOMO_SEED and the output folders at repetition `seed`."""
        self.seed = seed
        self.run_dir = self.work / "runs" / f"seed{seed}"
        self.results = self.run_dir / "nnUNet_results"
        self.results.mkdir(parents=True, exist_ok=True)
        self.pipe.env.update({"nnUNet_results": str(self.results), "FOMO_SEED": str(seed)})
        self.plans = f"fomoPlans_seed{seed}"
        self.scratch_plans = f"fomoPlans_seed{seed}_scratch"  # the same network, no pretrained checkpoint

    def _s(self, name: str) -> str:
        return f"{name}_seed{self.seed}"

    # ---- data -----------------------------------------------------------------------------------
    def synthesize(self) -> None:
        cmd = ["fomo-nnunet", "synth", "-o", str(self.synth_dir), "--preset", self.p.synth_preset,
               "--seed", str(self.data_seed), "-np", self.np, "--tasks", *map(str, self.tasks)]
        for flag, size in zip(("--n-train", "--n-test"), self.synth_sizes or ()):
            if size is not None:  # None: the preset's (with each task's train factor)
                cmd += [flag, str(size)]
        for option, value in zip(("--pretrain-sources", "--pretrain-subjects"), self.corpus):
            if value is not None:
                cmd += [option, str(value)]
        self.pipe.step("synth", lambda: self.pipe.run(cmd) and None)

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
    def pretrain(self, trainer: str | None = None) -> Path:
        """Plan, preprocess and pretrain (this seed) with the preset's trainer or another one (a variant)."""
        trainer = trainer or self.p.pretrain_trainer
        d = str(PRETRAIN_DATASET_ID)
        batch = ("--batch-size", str(self.pretrain_batch_size)) if self.pretrain_batch_size is not None else ()
        self.pipe.step("plan_pretrain", lambda: self.pipe.run(
            ["fomo-nnunet", "plan", "pretrain", "-d", d, "--arch", self.p.arch, "-np", self.np,
             *self.p.extra_plan_args, *batch]) and None)
        self.check_pretrain_batch()
        self.pipe.step("preprocess_pretrain", lambda: self.pipe.run(
            ["nnUNetv2_preprocess", "-d", d, "-plans_name", "fomoPretrainPlans", "-c", "3d_fullres",
             "-np", self.np]) and None)
        self.pipe.step(self._s(self.pretrain_step(trainer)), lambda: self.pipe.run(
            ["nnUNetv2_train", d, "3d_fullres", "all", "-p", "fomoPretrainPlans", "-tr", trainer,
             "-device", "cpu", *continue_option(self.pretrain_folder(trainer) / "fold_all")]) and None)
        return self.pretrain_folder(trainer)

    def pretrain_step(self, trainer: str) -> str:
        """The step that pretrains `trainer` (before the seed suffix): `pretrain` for the preset's own trainer,
        `pretrain_<trainer>` for any other, whether `benchmark features` or `benchmark --pretrain-trainer`
        asked for it, so the one reuses the checkpoints the other pretrained in the same folder. A folder
        benchmarked with --pretrain-trainer before this naming (its record names `trainer`, its `pretrain`
        step is done and `trainer`'s checkpoint is there) keeps its `pretrain` steps."""
        own = f"pretrain_{trainer}"
        if trainer == PRESETS[self.p.name].pretrain_trainer:
            return "pretrain"
        path = self.work / PRETRAINING_RECORD
        legacy = (path.is_file() and json.loads(path.read_text()).get("pretrain_trainer") == trainer
                  and self.pipe.done(self._s(own)) is None and self.pipe.done(self._s("pretrain")) is not None
                  and (self.pretrain_folder(trainer) / "fold_all" / "checkpoint_final.pth").is_file())
        return "pretrain" if legacy else own

    def pretrain_plans_batch(self) -> int | None:
        """The batch size in this folder's pretraining plans (None before they are planned)."""
        try:
            return int(pretrain_configuration(self.pre)[1]["batch_size"])
        except (StopIteration, FileNotFoundError):
            return None

    def check_pretrain_batch(self) -> None:
        """Refuse to pretrain at another batch than asked for: the plans are shared by every seed and trainer
        of the folder, and a planning step already done is not repeated."""
        have = self.pretrain_plans_batch()
        if self.pretrain_batch_size is not None and have is not None and have != self.pretrain_batch_size:
            raise ValueError(f"{self.work} holds pretraining plans with batch size {have}, not "
                             f"{self.pretrain_batch_size}; use a new --work folder for another batch size")

    def pretrain_data(self) -> Path:
        return pretrain_data(self.pre)

    def pretrain_folder(self, trainer: str | None = None) -> Path:
        name = next(self.pre.glob(f"Dataset{PRETRAIN_DATASET_ID:03d}_*")).name
        return self.results / name / f"{trainer or self.p.pretrain_trainer}__fomoPretrainPlans__3d_fullres"

    # ---- finetuned tasks (segmentation, classification, regression) ------------------------------
    def dataset_name(self, task: Task) -> str:
        return next(self.raw.glob(f"Dataset{task.default_dataset_id:03d}_*")).name

    def trainer_for(self, task: Task) -> str:
        return {SEGMENTATION: self.p.seg_trainer, CLASSIFICATION: self.p.cls_trainer,
                REGRESSION: self.p.reg_trainer}[task.kind]

    def model_folder(self, task: Task, trainer: str, plans: str | None = None) -> Path:
        return self.results / self.dataset_name(task) / f"{trainer}__{plans or self.plans}__3d_fullres"

    def finetune(self, task: Task, pretrained: Path) -> dict:
        d = str(task.default_dataset_id)
        plan = ["fomo-nnunet", "plan", "transfer", "-d", d, "--pretrained", str(pretrained), "-np", self.np,
                "--plans-name", self.plans, "--data-identifier", TASK_PLANS_DATA, *self.finetune_batch()]
        self.pipe.step(self._s(f"plan_{task.key}"), lambda: self.pipe.run(plan) and None)
        self.pipe.step(self._s(f"plan_{task.key}_scratch"), lambda: self.pipe.run(
            ["fomo-nnunet", "plan", "transfer", "-d", d, "--pretrained", str(pretrained), "--from-scratch",
             "-np", self.np, "--plans-name", self.scratch_plans, "--data-identifier", TASK_PLANS_DATA,
             *self.finetune_batch()]) and None)
        # every seed's plans (and the from-scratch ones) differ only in the checkpoint they name: one
        # preprocessing serves all
        self.pipe.step(f"preprocess_{task.key}", lambda: self.pipe.run(
            ["nnUNetv2_preprocess", "-d", d, "-plans_name", self.plans, "-c", "3d_fullres", "-np", self.np])
            and None)
        trainer = self.trainer_for(task)
        if self.adapt:  # after the preprocessing, which the cross-validation of `--adapt auto` trains on
            adapt = [*plan, "--adapt", self.adapt]
            if self.adapt == "auto":
                adapt += ["--adapt-trainer", trainer, "--adapt-folds", *map(str, self.adapt_folds), "-device", "cpu"]
            self.pipe.step(self._s(f"adapt_{task.key}"), lambda: self.pipe.run(adapt) and None)
        results = {arm: self.train_and_score(task, arm, trainer, plans)
                   for arm, plans in (("pretrained", self.plans), ("scratch", self.scratch_plans))}
        adaptation = (json.loads((self.pre / self.dataset_name(task) / f"{self.plans}.json").read_text())
                      .get("fomo") or {}).get("adaptation")
        if adaptation:
            results["pretrained"]["adaptation"] = adaptation
        return results

    def finetune_batch(self) -> tuple[str, ...]:
        """`plan transfer`'s batch option: none where the folder pretrained at the architecture preset's batch
        (`plan transfer` takes the checkpoint's, the same); with --pretrain-batch-size, or in a folder whose
        pretraining plans hold another batch (`benchmark features --pretrain-batch-size` planned it), the
        preset's batch, so that only the pretraining changes and both arms finetune as at the preset's batch."""
        from fomo_nnunet.plans.presets import ARCH_PRESETS

        default = ARCH_PRESETS[self.p.arch].default_batch_size
        if self.pretrain_batch_size is None and self.pretrain_plans_batch() in (None, default):
            return ()
        return ("--batch-size", str(default))

    def train_and_score(self, task: Task, arm: str, trainer: str, plans: str) -> dict:
        """Train `trainer` on `plans` for the preset's folds, predict the out-of-domain test split and score
        it (resumable steps named by `arm`, predictions in predictions/<task>/<arm>); returns the evaluate
        summary with its learning check. The task's plans and preprocessing must exist (`finetune`)."""
        d = str(task.default_dataset_id)
        images = self.raw / self.dataset_name(task) / "imagesTs"
        for fold in self.p.folds:
            self.pipe.step(self._s(f"train_{task.key}_{arm}_fold{fold}"), lambda fold=fold:
                           self.pipe.run(["nnUNetv2_train", d, "3d_fullres", fold, "-p", plans,
                                          "-tr", trainer, "-device", "cpu", *continue_option(
                                              self.model_folder(task, trainer, plans) / f"fold_{fold}")]) and None)
        out = self.run_dir / "predictions" / task.key / arm
        if task.kind == SEGMENTATION:
            cmd = ["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", d, "-c", "3d_fullres",
                   "-p", plans, "-tr", trainer, "-f", *self.p.folds, "-device", "cpu",
                   "-npp", "1", "-nps", "1"]
            pred, gt = out, self.raw / self.dataset_name(task) / "labelsTs"
        else:
            cmd = ["fomo-nnunet", "predict", "-i", str(images), "-o", str(out),
                   "-m", str(self.model_folder(task, trainer, plans)), "-f", *self.p.folds]
            pred, gt = out / "predictions.csv", self.raw / self.dataset_name(task) / "targetsTs.json"
        self.pipe.step(self._s(f"predict_{task.key}_{arm}"), lambda: self.pipe.run(cmd) and None)
        result = self.pipe.step(self._s(f"evaluate_{task.key}_{arm}"),
                                lambda: self.evaluate(task, pred, gt, out))["result"]
        result["learning_check"] = learning_check(task.kind, out, out.parent / f"{out.name}_scores")
        return result

    def evaluate(self, task: Task, pred: Path, gt: Path, out: Path) -> dict:
        scores = out.parent / f"{out.name}_scores"
        self.pipe.run(["fomo-nnunet", "evaluate", task.key, "--pred", str(pred), "--gt", str(gt),
                       "-o", str(scores)])
        return json.loads((scores / "summary.json").read_text())

    # ---- embedding tasks (6, 7): a linear probe on frozen features ------------------------------
    def probe(self, task: Task, pretrained: Path) -> dict:
        from fomo_nnunet.models.checkpoints import find_checkpoint
        from fomo_nnunet.evaluation.probe import EXAMPLE_BINS

        name = self.dataset_name(task)
        folder = self.raw / name
        table = self.work / "probe" / task.key / "labels.tsv"
        self.pipe.step(f"labels_{task.key}", lambda: write_probe_table(folder, table) and None)
        random_init = self.run_dir / "probe" / "random_init_encoder.pth"
        self.pipe.step(self._s("random_init_encoder"), lambda: save_random_init(
            find_checkpoint(pretrained), random_init, self.seed, self.pretrain_data()) and None)
        scores = {}
        for variant, ckpt in (("pretrained", find_checkpoint(pretrained)), ("scratch", str(random_init))):
            emb = self.run_dir / "probe" / task.key / f"embeddings_{variant}"
            for split in ("imagesTr", "imagesTs"):
                self.pipe.step(self._s(f"embed_{task.key}_{variant}_{split}"), lambda split=split, emb=emb, ckpt=ckpt:
                               self.pipe.run(["fomo-nnunet", "embed", "-i", str(folder / split), "-o", str(emb),
                                              "--checkpoint", ckpt]) and None)
            out = self.run_dir / "probe" / task.key / f"probe_{variant}"
            # the probe's own split and seed (the organisers'): the same for every repetition
            cmd = ["fomo-nnunet", "probe", str(emb), "--labels", str(table), "--stratify", "age", "-o", str(out)]
            if "fairness_score" in task.metrics:  # the organisers' fairness score over sex and binned age
                cmd += ["--groups", "sex", "--groups", "age:" + ",".join(f"{b:g}" for b in EXAMPLE_BINS)]
            self.pipe.step(self._s(f"probe_{task.key}_{variant}"), lambda cmd=cmd: self.pipe.run(cmd) and None)
            scores[variant] = json.loads((out / "probe.json").read_text())
        return scores

    def pretrain_variants(self, trainers: tuple[str, ...]) -> None:
        """The data, its pretraining plans and every seed's checkpoint for each trainer (resumable): what
        the feature benchmark compares."""
        self.check_pretrain_batch()
        self.synthesize()
        self.convert(())
        for seed in self.seeds:
            self.use_seed(seed)
            for trainer in trainers:
                self.log(f"==== pretraining {trainer} with seed {seed}")
                self.pretrain(trainer)

    # ---- the whole story ------------------------------------------------------------------------
    def claim_pretraining(self) -> None:
        """Record which trainer pretrains in this folder, and refuse a folder pretrained with another: its
        finished steps (task plans, finetuning, predictions) build on that checkpoint and would be skipped."""
        self.check_pretrain_batch()
        path = self.work / PRETRAINING_RECORD
        record = json.loads(path.read_text()) if path.is_file() else {}
        if record.get("adapt") != self.adapt and any(self.pipe.steps_dir.glob("train_*.json")):
            raise ValueError(f"{self.work} holds finetuning with --adapt {record.get('adapt') or '(none)'}, and its "
                             f"finished steps would be skipped; use a new --work folder for --adapt "
                             f"{self.adapt or '(none)'}")
        if path.is_file():
            had = record["pretrain_trainer"]
        elif any(self.pipe.steps_dir.glob("plan_*_seed*.json")):
            had = PRESETS[self.p.name].pretrain_trainer  # a folder from before the record: the preset's trainer
        else:
            had = None  # nothing finetuned yet (pretrainings alone, as `benchmark features` leaves them, are kept
            # apart by trainer and reused)
        if had is not None and had != self.p.pretrain_trainer:
            raise ValueError(f"{self.work} holds a benchmark pretrained with {had}, and its finished steps build on "
                             f"that checkpoint; use a new --work folder for {self.p.pretrain_trainer}")
        path.write_text(json.dumps({"pretrain_trainer": self.p.pretrain_trainer, "adapt": self.adapt}, indent=1))

    def run(self) -> Path:
        """Every step (resumable) for every seed, then report.md; returns the report's path."""
        from fomo_nnunet.benchmarks.report import write_report

        self.claim_pretraining()
        self.synthesize()
        self.convert(self.tasks)
        runs = {}
        for seed in self.seeds:
            self.use_seed(seed)
            self.log(f"==== repetition with seed {seed} ({self.seeds.index(seed) + 1} of {len(self.seeds)})")
            pretrained = self.pretrain()
            runs[seed] = {}
            for n in self.tasks:
                task = TASKS_BY_NUMBER[n]
                runs[seed][task.key] = self.probe(task, pretrained) if task.kind == EMBEDDING else \
                    self.finetune(task, pretrained)
        self.use_seed(self.seeds[0])  # the submission check uses the first repetition's models
        settings = {"preset": self.p.name, "seeds": " ".join(map(str, self.seeds)), "data seed": self.data_seed,
                    "synthetic data": self.p.synth_preset, "architecture": self.p.arch,
                    "pretraining trainer": self.p.pretrain_trainer, "segmentation trainer": self.p.seg_trainer,
                    "classification trainer": self.p.cls_trainer, "regression trainer": self.p.reg_trainer,
                    "folds": " ".join(self.p.folds),
                    "adaptation (pretrained arm)": (f"plan transfer --adapt {self.adapt}" + (
                        f" (cross-validation folds {' '.join(map(str, self.adapt_folds))})" if self.adapt == "auto"
                        else "")) if self.adapt else "the trainers' recipes as they are",
                    "augmentation workers": self.pipe.env.get("nnUNet_n_proc_DA"),
                    "tasks 6/7": "the organisers' fomo-lp linear probe (SGD heads, learning-rate sweep) on frozen "
                                 "embeddings (pretrained vs random-init encoder)"}
        container = self.container_check(self.bundle())
        report = write_report(self.work, runs, settings, self.own_step_seconds(), self.pretrain_folder(),
                              self.overlays(), container)
        self.log(f"report: {report}")
        return report

    def own_step_seconds(self) -> dict[str, float]:
        """The seconds of this benchmark's steps: a folder may also hold other trainers' pretrainings (what
        `benchmark features --pretrain` left), which are not part of this run's cost."""
        own = tuple(f"{self.pretrain_step(self.p.pretrain_trainer)}_seed{s}" for s in self.seeds)
        return {k: v for k, v in self.pipe.seconds().items() if not k.startswith("pretrain") or k in own}

    def overlays(self) -> list[dict]:
        """One segmentation overlay per segmentation task: the first out-of-domain test case, first seed."""
        out = []
        for n in self.tasks:
            task = TASKS_BY_NUMBER[n]
            if task.kind != SEGMENTATION:
                continue
            folder = self.raw / self.dataset_name(task)
            gts = sorted((folder / "labelsTs").glob("*.nii.gz"))
            if not gts:
                continue
            case = gts[0].name[: -len(".nii.gz")]
            preds = {v: self.run_dir / "predictions" / task.key / v / gts[0].name for v in ("pretrained", "scratch")}
            out.append({"file": f"overlay_{task.key}.png", "image": folder / "imagesTs" / f"{case}_0000.nii.gz",
                        "gt": gts[0], "predictions": preds,
                        "title": f"{task.key} {task.name}: {case} (seed {self.seed})"})
        return out

    # ---- the submission: bundle the pretrained models, run the container entry per task ---------
    def bundle(self) -> Path:
        from fomo_nnunet.models.checkpoints import find_checkpoint

        out = self.work / "bundle"
        args = ["fomo-nnunet", "bundle", "-o", str(out)]
        for n in self.tasks:
            task = TASKS_BY_NUMBER[n]
            if task.kind != EMBEDDING:
                args += [f"--task{n}", str(self.model_folder(task, self.trainer_for(task)))]
        args += ["--embedding", find_checkpoint(self.pretrain_folder())]
        previous = self.pipe.done("bundle")
        if previous is not None and previous["result"].get("command") != args:
            # the folder was bundled for other tasks or seeds (an earlier run with other --tasks): bundle this
            # run's models, and check the container again on that bundle
            self.log("[redo] bundle: it holds another run's models; bundling this run's, and checking the "
                     "container on them again")
            self.pipe.forget("bundle", *(f"container_{task.key}" for task in TASKS_BY_NUMBER.values()))

        def bundle():
            self.pipe.run(args)
            return {"command": args}

        self.pipe.step("bundle", bundle)
        return out

    def container_check(self, bundle: Path) -> dict:
        """Run the container's entry (container/predict.py in a checkout, else `fomo-nnunet fomo26`) on the
        first out-of-domain test case of every task, with the official argument names, and check the output."""
        from fomo_nnunet.challenge.entry_io import check_output_file

        script = Path(__file__).resolve().parents[2] / "container" / "predict.py"
        results = {}
        for n in self.tasks:
            task = TASKS_BY_NUMBER[n]
            case = sorted((self.synth_dir / "finetune" / task.key / "test" / "preprocessed").glob("sub_*/ses_*"))[0]
            args = case_arguments(task, case)
            suffix = {"nifti_labels": ".nii.gz", "npy_embedding": ".npy"}.get(task.output, ".txt")
            output = self.work / "container_check" / f"{task.key}_{case.parent.name}{suffix}"
            output.parent.mkdir(parents=True, exist_ok=True)
            if script.is_file():
                cmd = [str(self.pipe.bin / "python"), str(script), *args, "--output", str(output), "--verbose"]
                env_task = task.key
            else:
                cmd, env_task = ["fomo-nnunet", "fomo26", task.key, *args, "--output", str(output), "--verbose"], None

            def go(cmd=cmd, env_task=env_task, output=output, args=args, task=task):
                self.pipe.env.update({"FOMO_BUNDLE": str(bundle), **({"FOMO_TASK": env_task} if env_task else {})})
                self.pipe.run(cmd)
                return {"output": str(output), "check": check_output_file(task, str(output), args[1::2])}

            results[task.key] = self.pipe.step(f"container_{task.key}", go)["result"]
        return results


def continue_option(fold_folder: Path) -> tuple[str, ...]:
    """`--c` where a training of this fold was cut short (a checkpoint and no finished step): nnU-Net continues
    it, and the fomo trainers do so bit for bit on a CPU (docs/preemption.md). Without a checkpoint: nothing,
    as nnU-Net would only warn that there is none to continue from."""
    return ("--c",) if any((fold_folder / f).is_file() for f in ("checkpoint_latest.pth", "checkpoint_final.pth")) \
        else ()


def pretrain_configuration(preprocessed: Path) -> tuple[Path, dict]:
    """The pretraining dataset's folder in nnUNet_preprocessed and its plans' 3d_fullres configuration
    (StopIteration without the dataset, FileNotFoundError before it is planned)."""
    folder = next(Path(preprocessed).glob(f"Dataset{PRETRAIN_DATASET_ID:03d}_*"))
    plans = json.loads((folder / "fomoPretrainPlans.json").read_text())
    return folder, plans["configurations"]["3d_fullres"]


def pretrain_data(preprocessed: Path) -> Path:
    """The preprocessed pretraining cases: nnUNet_preprocessed/Dataset900_*/<its plans' data identifier>."""
    folder, configuration = pretrain_configuration(preprocessed)
    return folder / configuration["data_identifier"]


def case_arguments(task: Task, session_folder: Path) -> list[str]:
    """The container's arguments for one case in the FOMO finetuning layout (official names)."""
    args = []
    for channel in task.channels:
        for stem in channel.file_stems:
            f = session_folder / f"{stem}.nii.gz"
            if f.is_file():
                arg = channel.cli_args[0] if len(channel.cli_args) == 1 else stem
                args += [f"--{arg}", str(f)]
                break
        else:
            raise FileNotFoundError(f"{session_folder}: no file for {task.key}'s {channel.name} channel "
                                    f"(looked for {', '.join(channel.file_stems)})")
    return args


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


def save_random_init(pretrained_checkpoint: str, out: Path, seed: int, corpus: Path | None = None) -> None:
    """The pretrained network's architecture with random weights: the frozen-feature baseline.

    It never inherits the pretrained embedding statistics. When the pretrained checkpoint has them and
    `corpus` (the preprocessed pretraining folder) is given, it gets its own over the same cases (as many,
    chosen the same way); otherwise none. Either way both probe arms are scaled alike. It keeps the
    pretrained checkpoint's embedding pooling, so both arms are pooled alike too."""
    import torch

    from fomo_nnunet.models.embedding_stats import POOLING_KEY, STATS_KEY, EmbeddingStats, corpus_embedding_stats, pooling_of
    from fomo_nnunet.models.transfer import PretrainMetadata, load_checkpoint_safely

    ckpt = load_checkpoint_safely(pretrained_checkpoint)
    meta = PretrainMetadata.from_dict(ckpt["fomo_metadata"])  # keeps no embedding statistics
    torch.manual_seed(seed)
    net = meta.build_network(num_outputs=meta.num_input_channels)
    d = meta.to_dict()
    d["objective"], d["iterations_trained"], d["epochs_trained"] = "none (random initialisation)", 0, 0
    d[POOLING_KEY] = pooling_of(ckpt["fomo_metadata"], pretrained_checkpoint)
    pretrained = EmbeddingStats.from_checkpoint(ckpt, pretrained_checkpoint)
    if corpus is not None and pretrained is not None:
        stats = corpus_embedding_stats(net.encoder, corpus, meta.patch_size, max_cases=pretrained.n_cases,
                                       pooling=d[POOLING_KEY])
        d[STATS_KEY] = stats.to_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": net.state_dict(), "fomo_metadata": d}, out)
