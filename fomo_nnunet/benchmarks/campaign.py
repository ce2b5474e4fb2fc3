"""`fomo-nnunet bench campaign`: every GPU figure the project needs, in one command that fits a short loan.

The parts, in the order of their value (each in a process of its own with a deadline; the parent kills a
part that overruns and keeps what it wrote, and rewrites OUT/campaign.json and OUT/campaign.md after every
part, so a run cut short still returns what it measured):

1. steps: a training step of nnUNetTrainerFomoMAE and of nnU-Net's nnUNetTrainer on the same plans and
   batches (fomo_nnunet.benchmarks.step_bench), per setting (eager fp16, bf16, channels-last, torch.compile);
2. entry: `fomo-nnunet fomo26` per task, each a whole process (fomo_nnunet.benchmarks.throughput.prepare_entry_timing);
3. loader: patches per second of the MAE trainer's data loader at several worker counts;
4. pretrain: a short MAE pretraining on a synthetic corpus, cut at a wall-clock limit; its weights come back.

The entry's bundle and the synthetic corpus are prepared on the CPU in a background process while the
steps run on the GPU (noted in the results: it shares the CPU with the step part).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fomo_nnunet.io.atomic import write_text

PRETRAIN_DATASET_ID = 950
PARTS = ("steps", "entry", "loader", "pretrain")
CHECKPOINT_LIMIT_BYTES = 16 * 1024 * 1024  # what comes back from a lent machine per file
RESULT_FILE = "campaign.json"
REPORT_FILE = "campaign.md"
CHECKPOINT_FILE = "pretrain_weights.pth"


@dataclass(frozen=True)
class CampaignSizes:
    """Everything that differs between the full campaign (one H100/H200) and the CPU smoke run."""

    name: str
    step_arch: str
    step_patch: int
    step_batch: int
    step_spacing: float
    warmup_steps: int
    timed_steps: int
    check_steps: int                   # the loss curves compared with eager fp16's over these first steps
    loader_workers: tuple[int, ...]
    loader_batches: int
    synth_args: tuple[str, ...]        # `fomo-nnunet synth` options of the pretraining corpus
    pretrain_arch: str                 # also the loader's plans (the loader does not depend on the network)
    pretrain_iterations: int           # per epoch
    pretrain_epochs: int               # the schedule's length; the wall-clock limit may stop it earlier
    entry_arch: str
    entry_tasks: tuple[int, ...]
    entry_options: tuple[str, ...]     # more `fomo-nnunet fomo26` options
    budget_seconds: int                # the whole campaign
    part_seconds: dict = field(default_factory=dict)  # the most each part may take (pretrain: --minutes)
    finish_seconds: int = 15           # kept back for the last report


FULL = CampaignSizes(
    "full", "resenc_b", 160, 2, 1.0, warmup_steps=3, timed_steps=10, check_steps=5, loader_workers=(8, 12, 16),
    loader_batches=30, synth_args=("--preset", "full", "--tasks", "3", "--n-train", "0", "--n-test", "0",
                                   "--pretrain-sources", "2", "--pretrain-subjects", "3"),
    pretrain_arch="resenc_s", pretrain_iterations=50, pretrain_epochs=30, entry_arch="resenc_b",
    entry_tasks=(2, 4, 1, 3, 5, 6, 7), entry_options=(), budget_seconds=540,
    part_seconds={"steps": 300, "entry": 90, "loader": 45})
SMOKE = CampaignSizes(
    "smoke", "tiny", 32, 2, 4.0, warmup_steps=0, timed_steps=1, check_steps=1, loader_workers=(1,),
    loader_batches=2, synth_args=("--preset", "tiny", "--tasks", "3", "--n-train", "0", "--n-test", "0",
                                  "--pretrain-sources", "1", "--pretrain-subjects", "1"),
    pretrain_arch="tiny", pretrain_iterations=2, pretrain_epochs=1, entry_arch="tiny", entry_tasks=(2,),
    entry_options=("--no-mirroring",),
    budget_seconds=600, part_seconds={"steps": 240, "entry": 120, "loader": 90}, finish_seconds=5)


def environment(device: str) -> dict:
    """The versions and the device every figure of the campaign was measured with."""
    import platform

    import torch

    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "device": device, "cpu_count": os.cpu_count()}
    try:
        import nnunetv2  # noqa: F401
        from importlib.metadata import version

        env["nnunetv2"] = version("nnunetv2")
    except Exception as e:  # reported, not fatal: the parts say what failed
        env["nnunetv2"] = f"not importable: {e}"
    if device == "cuda" and torch.cuda.is_available():
        from fomo_nnunet.benchmarks.step_bench import peak_bf16_tflops

        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
        env["peak_bf16_tflops"] = peak_bf16_tflops(env["gpu"])
    else:
        env["gpu"], env["peak_bf16_tflops"] = None, None
    return env


# ---- the parent: deadlines, background preparation, reports ------------------------------------------
class Campaign:
    def __init__(self, out: str | os.PathLike, device: str, sizes: CampaignSizes, minutes: float,
                 work: str | os.PathLike | None = None, command: str = "", log=print):
        self.out = Path(out)
        self.device, self.sizes, self.minutes, self.log = device, sizes, minutes, log
        self.work = Path(work) if work else Path(tempfile.mkdtemp(prefix="fomo_campaign_"))
        self.keep_work = work is not None
        self.command = command
        self.t0 = time.monotonic()
        self.deadline = self.t0 + sizes.budget_seconds
        self.results: dict = {}

    # -- helpers
    def env(self) -> dict:
        from fomo_nnunet.paths import nnunet_defaults, trainers_dir

        env = dict(os.environ)
        env.update(nnunet_defaults(self.work / "nnunet"))
        env["nnUNet_extTrainer"] = str(trainers_dir())
        env.setdefault("FOMO_SEED", "0")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def write(self) -> None:
        self.results["elapsed_seconds"] = round(time.monotonic() - self.t0, 1)
        write_text(json.dumps(self.results, indent=1, default=str), self.out / RESULT_FILE)
        (self.out / REPORT_FILE).write_text(format_report(self.results))

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        env = self.env()
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            Path(env[k]).mkdir(parents=True, exist_ok=True)
        self.results = {"command": self.command, "sizes": asdict(self.sizes), "minutes": self.minutes,
                        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                        "environment": environment(self.device), "parts": {}}
        self.write()
        prep_log = open(self.work / "prepare.log", "w")
        prep = subprocess.Popen([sys.executable, "-m", "fomo_nnunet.benchmarks.campaign", "prepare", "--work", str(self.work),
                                 "--sizes", self.sizes.name], env=env, stdout=prep_log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            for part in PARTS:
                self.run_part(part, env, prep)
        finally:
            if prep.poll() is None:
                _kill_group(prep)
            prep_log.close()
            self.results["prepare_log_tail"] = tail(self.work / "prepare.log", 1500)
            self.write()
            if not self.keep_work:
                shutil.rmtree(self.work, ignore_errors=True)
        return self.results

    def part_budget(self, part: str) -> float:
        left = self.left() - self.sizes.finish_seconds
        if part == "pretrain":
            return min(self.minutes * 60 + 60, left)  # the run itself + starting and saving
        return min(self.sizes.part_seconds[part], left)

    def run_part(self, part: str, env: dict, prep: subprocess.Popen) -> None:
        budget = self.part_budget(part)
        record = {"status": "not started", "budget_seconds": round(budget, 1)}
        self.results["parts"][part] = record
        if budget < 5:
            record["status"] = "skipped: no time left in the campaign's budget"
            self.write()
            return
        start = time.monotonic()
        part_file = self.work / f"part_{part}.json"
        part_file.unlink(missing_ok=True)
        if part != "steps":  # the others need the background preparation
            try:
                prep.wait(timeout=max(1.0, budget - 5))
            except subprocess.TimeoutExpired:
                record["status"] = "skipped: the preparation (synthetic corpus, entry bundle) was not done in time"
                self.write()
                return
            if prep.returncode:
                record["status"] = f"skipped: the preparation failed (exit {prep.returncode}; prepare_log_tail)"
                self.write()
                return
        remaining = budget - (time.monotonic() - start)
        cmd = [sys.executable, "-m", "fomo_nnunet.benchmarks.campaign", "part", part, "--work", str(self.work),
               "--sizes", self.sizes.name, "--device", self.device, "--seconds", f"{remaining:.0f}",
               "--minutes", str(self.minutes), "--out", str(self.out)]
        self.log(f"campaign: {part} (up to {remaining:.0f} s)")
        with open(self.work / f"part_{part}.log", "w") as log:
            # a session of its own: the part's loader workers and compile workers end with it
            p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = p.wait(timeout=remaining)
                record["status"] = "done" if rc == 0 else f"failed (exit {rc})"
            except subprocess.TimeoutExpired:
                _kill_group(p)
                record["status"] = "killed at its deadline: the figures below are those finished before"
        record["seconds"] = round(time.monotonic() - start, 1)
        if part_file.is_file():
            record.update(json.loads(part_file.read_text()))
        if record["status"] != "done":
            record["log_tail"] = tail(self.work / f"part_{part}.log", 2000)
        self.log(f"campaign: {part} {record['status']} after {record['seconds']} s")
        self.write()


def _kill_group(p: subprocess.Popen) -> None:
    """End a part and every process it started (it leads a session of its own)."""
    import signal

    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def tail(path: Path, chars: int) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# ---- the parts, each in its own process ------------------------------------------------------------------
class PartWriter:
    """A part's figures, rewritten whole after each one, so a part killed at its deadline keeps what it did."""

    def __init__(self, path: Path, command: str, device: str):
        self.path, self.data = path, {"command": command, "device": device, "figures": []}

    def add(self, figure: dict) -> None:
        self.data["figures"].append(figure)
        self.save()

    def set(self, **kw) -> None:
        self.data.update(kw)
        self.save()

    def save(self) -> None:
        write_text(json.dumps(self.data, default=str), self.path)


def prepare(work: Path, sizes: CampaignSizes) -> None:
    """On the CPU, beside the step part: the synthetic corpus, converted, planned and preprocessed, and the
    entry's bundle."""
    np_ = str(max(1, min(8, (os.cpu_count() or 2) // 2)))
    d = str(PRETRAIN_DATASET_ID)

    def run(cmd):
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)

    cli = [sys.executable, "-m", "fomo_nnunet.cli"]
    run([*cli, "synth", "-o", str(work / "synth"), *sizes.synth_args, "--no-previews", "-np", np_])
    run([*cli, "convert", "pretrain", str(work / "synth" / "pretrain"), "-d", d, "-np", np_])
    run([*cli, "plan", "pretrain", "-d", d, "--arch", sizes.pretrain_arch, "-np", np_])
    run([sys.executable, "-c", "from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
         "preprocess_entry; preprocess_entry()", "-d", d, "-plans_name", "fomoPretrainPlans", "-c", "3d_fullres",
         "-np", np_])
    from fomo_nnunet.benchmarks.throughput import prepare_entry_timing

    print("+ entry bundle", flush=True)
    bundle, case_args = prepare_entry_timing(work / "entry", sizes.entry_arch, sizes.entry_tasks,
                                             num_processes=int(np_))
    (work / "entry_cases.json").write_text(json.dumps({"bundle": str(bundle), "cases": case_args}))


def part_steps(w: PartWriter, work: Path, sizes: CampaignSizes, device: str, seconds: float) -> None:
    from fomo_nnunet.benchmarks.step_bench import StepBench

    StepBench(work / "steps", sizes, device).run(w, time.monotonic() + seconds)


def part_entry(w: PartWriter, work: Path, sizes: CampaignSizes, device: str, seconds: float) -> None:
    from fomo_nnunet.benchmarks.throughput import parse_entry_timing
    from fomo_nnunet.tasks import TASKS_BY_NUMBER

    deadline = time.monotonic() + seconds
    prepared = json.loads((work / "entry_cases.json").read_text())
    out = work / "entry_out"
    out.mkdir(exist_ok=True)
    suffix = {"nifti_labels": ".nii.gz", "npy_embedding": ".npy"}
    w.set(arch=sizes.entry_arch, input="MNI152 T1 template at 1 mm (197x233x189)",
          mirroring="off" if "--no-mirroring" in sizes.entry_options else "the entry's default (on)")
    last = 0.0
    for n in sizes.entry_tasks:
        if time.monotonic() + last > deadline:
            w.add({"task": n, "status": "not reached before the part's deadline"})
            continue
        task = TASKS_BY_NUMBER[n]
        cmd = [sys.executable, "-m", "fomo_nnunet.cli", "fomo26", task.key, *prepared["cases"][str(n)],
               "--output", str(out / f"{task.key}{suffix.get(task.output, '.txt')}"), "--bundle", prepared["bundle"],
               "--verbose", "--device", device, *sizes.entry_options]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        last = wall
        fig = {"task": f"{n} {task.key}", "command": " ".join(["fomo-nnunet", *cmd[3:]]), "process_seconds": wall}
        if p.returncode:
            fig["status"] = f"failed (exit {p.returncode}): {p.stderr[-500:]}"
        else:
            steps = parse_entry_timing(p.stderr)
            inside = sum(steps.values())
            fig.update({"import_seconds": wall - inside + steps.get("import", 0.0),
                        "model_load_seconds": steps.get("load model", 0.0),
                        "inference_seconds": steps.get("preprocess + inference", 0.0),
                        "export_seconds": steps.get("export", 0.0),
                        "inputs_seconds": sum(steps.get(k, 0.0) for k in ("check inputs", "read inputs",
                                                                            "resample to reference")),
                        "steps": steps})
        w.add(fig)


def part_loader(w: PartWriter, work: Path, sizes: CampaignSizes, device: str, seconds: float) -> None:
    from fomo_nnunet.benchmarks.throughput import _make_trainer, _shutdown, _time_loader

    deadline = time.monotonic() + seconds
    w.set(plans=f"fomoPretrainPlans ({sizes.pretrain_arch}, the synthetic corpus)", augmentation="CPU workers")
    results = os.environ["nnUNet_results"]
    last = 0.0
    for workers in sizes.loader_workers:
        if time.monotonic() + 1.5 * last > deadline:
            w.add({"workers": workers, "status": "not reached before the part's deadline"})
            continue
        t0 = time.monotonic()
        os.environ["nnUNet_n_proc_DA"] = str(workers)
        with tempfile.TemporaryDirectory(prefix="loader_", dir=work) as scratch:
            os.environ["nnUNet_results"] = scratch  # trainer logs, not the campaign's results
            trainer = _make_trainer("nnUNetTrainerFomoMAE", PRETRAIN_DATASET_ID, "fomoPretrainPlans", "3d_fullres",
                                    _torch_device(device))
            try:
                sps = _time_loader(trainer, sizes.loader_batches)
            finally:
                _shutdown(trainer)
                os.environ["nnUNet_results"] = results
        w.add({"workers": workers, "trainer": "nnUNetTrainerFomoMAE", "patches_per_second": sps,
               "patch": [int(p) for p in trainer.configuration_manager.patch_size],
               "batch": int(trainer.batch_size), "batches_timed": sizes.loader_batches})
        last = time.monotonic() - t0


def part_pretrain(w: PartWriter, work: Path, sizes: CampaignSizes, device: str, seconds: float, minutes: float,
                  out: Path) -> None:
    import torch

    from fomo_nnunet.training.loop import train_until
    from fomo_nnunet.models.transfer import load_checkpoint_safely

    limit = min(minutes * 60, seconds - 30 if seconds > 60 else seconds / 2)
    # eager: a compile would take a large part of a few minutes (the step part times compiled steps)
    trainer_name = "nnUNetTrainerFomoMAE_eager"
    w.set(arch=sizes.pretrain_arch, trainer=trainer_name, wall_limit_seconds=limit,
          planned_epochs=sizes.pretrain_epochs, iterations_per_epoch=sizes.pretrain_iterations)
    from nnunetv2.run.run_training import get_trainer_from_args

    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # as nnU-Net's run_training on CUDA
    trainer = get_trainer_from_args(str(PRETRAIN_DATASET_ID), "3d_fullres", "all", trainer_name,
                                    "fomoPretrainPlans", device=_torch_device(device))
    trainer.num_epochs, trainer.num_iterations_per_epoch = sizes.pretrain_epochs, sizes.pretrain_iterations
    trainer.num_val_iterations_per_epoch = max(1, sizes.pretrain_iterations // 10)
    trainer.embedding_stats_cases = 16
    record = train_until(trainer, limit)
    final = Path(trainer.output_folder) / "checkpoint_final.pth"
    full = load_checkpoint_safely(final)
    keep = {k: full[k] for k in ("network_weights", "fomo_metadata", "trainer_name", "init_args", "current_epoch")
            if k in full}
    target = out / CHECKPOINT_FILE
    torch.save(keep, target)
    size = target.stat().st_size
    if size > CHECKPOINT_LIMIT_BYTES:
        target.unlink()
    w.set(**record, checkpoint=str(target.name) if size <= CHECKPOINT_LIMIT_BYTES else None,
          checkpoint_bytes=size, checkpoint_note="weights and fomo_metadata only (no optimiser state): for "
          "`fomo-nnunet benchmark features --checkpoint` on a CPU",
          final_train_loss=_last(trainer, "train_losses"), final_val_loss=_last(trainer, "val_losses"))


def _last(trainer, key: str):
    values = trainer.logger.local_logger.my_fantastic_logging.get(key) or [None]
    return None if values[-1] is None else float(values[-1])


def _torch_device(device: str):
    import torch

    return torch.device(device)


def run_part_process(part: str, work: Path, sizes: CampaignSizes, device: str, seconds: float, minutes: float,
                     out: Path) -> None:
    command = " ".join(["fomo-nnunet", "bench", "campaign", "--device", device, "--minutes", str(minutes)]
                       + (["--smoke"] if sizes.name == "smoke" else []))
    w = PartWriter(work / f"part_{part}.json", f"{command} (part {part})", device)
    if part == "steps":
        part_steps(w, work, sizes, device, seconds)
    elif part == "entry":
        part_entry(w, work, sizes, device, seconds)
    elif part == "loader":
        part_loader(w, work, sizes, device, seconds)
    elif part == "pretrain":
        part_pretrain(w, work, sizes, device, seconds, minutes, out)
    else:
        raise ValueError(f"unknown part {part!r}")


# ---- the report -----------------------------------------------------------------------------------------
def _f(x, spec=".3f") -> str:
    return "" if x is None else format(x, spec)


def format_report(r: dict) -> str:
    env = r.get("environment", {})
    lines = [f"# GPU campaign ({r.get('sizes', {}).get('name', '?')})", "",
             f"Command: `{r.get('command', '')}`, started {r.get('started_utc', '?')} UTC, "
             f"{r.get('elapsed_seconds', '?')} s in all.",
             f"Device: {env.get('device')} {env.get('gpu') or ''}; torch {env.get('torch')}, CUDA {env.get('cuda')}, "
             f"cuDNN {env.get('cudnn')}, nnU-Net {env.get('nnunetv2')}, Python {env.get('python')}, "
             f"{env.get('cpu_count')} CPUs; dense bf16 peak (data sheet): "
             f"{str(env.get('peak_bf16_tflops')) + ' TFLOP/s' if env.get('peak_bf16_tflops') else 'not known for this device'}.",
             ""]
    parts = r.get("parts", {})
    for name in PARTS:
        p = parts.get(name)
        if p is None:
            continue
        lines += [f"## {name}: {p.get('status')} ({p.get('seconds', 0)} s of {p.get('budget_seconds')})", ""]
        if p.get("command"):
            lines += [f"Command: `{p['command']}`, device {p.get('device')}.", ""]
        lines += _PART_TABLES[name](p)
        lines.append("")
    return "\n".join(lines)


def _steps_table(p: dict) -> list[str]:
    out = []
    if p.get("plans"):
        out += [f"Plans: {p['plans']}; {p.get('note', '')}", ""]
    if p.get("matmul_bf16_tflops"):
        out += [f"A bf16 8192^3 matrix product on random data ran at {p['matmul_bf16_tflops']:.0f} TFLOP/s on this "
                f"GPU (the share of peak below is of the data sheet's figure).", ""]
    out += ["| trainer | setting | precision | s/step (median) | first step s | compile s | TFLOP/step | TFLOP/s "
            "| share of peak | peak GiB | loss vs eager fp16 (max rel. diff, first steps) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in p.get("figures", []):
        if "step_seconds" not in f:
            out.append(f"| {f.get('trainer')} | {f.get('setting')} | | {f.get('status')} |||||||")
            continue
        check = f.get("loss_check") or {}
        verdict = "" if not check else (f"{check['max_relative_difference']:.2e} "
                                        f"({'within' if check['within_tolerance'] else 'OUTSIDE'} "
                                        f"{check['tolerance']:g})")
        share = f.get("share_of_peak")
        out.append(f"| {f['trainer']} | {f['setting']} | {f['precision']} | {_f(f['step_seconds'], '.4f')} | "
                   f"{_f(f['first_step_seconds'], '.2f')} | {_f(f.get('compile_seconds'), '.1f')} | "
                   f"{_f(f.get('tflop_per_step'), '.3g')} | {_f(f.get('tflops'), '.3g')} | "
                   f"{'' if share is None else f'{100 * share:.1f} %'} | {_f(f.get('peak_memory_gib'), '.1f')} | "
                   f"{verdict} |")
    return out


def _entry_table(p: dict) -> list[str]:
    out = [f"Models: untrained {p.get('arch')} on {p.get('input')}; mirroring {p.get('mirroring')}.", "",
           "| task | process s | import s | model load s | inference s | export s | inputs s |",
           "|---|---|---|---|---|---|---|"]
    for f in p.get("figures", []):
        if "import_seconds" not in f:
            out.append(f"| {f.get('task')} | {f.get('status')} ||||||")
            continue
        out.append(f"| {f['task']} | {f['process_seconds']:.2f} | {f['import_seconds']:.2f} | "
                   f"{f['model_load_seconds']:.2f} | {f['inference_seconds']:.2f} | {f['export_seconds']:.2f} | "
                   f"{f['inputs_seconds']:.2f} |")
    return out


def _loader_table(p: dict) -> list[str]:
    out = ["| workers | patches/s | patch | batch |", "|---|---|---|---|"]
    for f in p.get("figures", []):
        if "patches_per_second" not in f:
            out.append(f"| {f.get('workers')} | {f.get('status')} |||")
            continue
        out.append(f"| {f['workers']} | {f['patches_per_second']:.1f} | {f['patch']} | {f['batch']} |")
    return out


def _pretrain_table(p: dict) -> list[str]:
    keys = ("arch", "epochs_done", "planned_epochs", "iterations_per_epoch", "steps_done", "train_seconds",
            "seconds_per_step", "final_train_loss", "final_val_loss", "stopped_by", "checkpoint", "checkpoint_bytes")
    return [f"- {k}: {p[k]}" for k in keys if k in p]


_PART_TABLES = {"steps": _steps_table, "entry": _entry_table, "loader": _loader_table, "pretrain": _pretrain_table}


def main(argv: list[str] | None = None) -> int:
    """The campaign's own processes: `prepare` and `part NAME` (the parent starts them)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m fomo_nnunet.benchmarks.campaign")
    p.add_argument("what", choices=["prepare", "part"])
    p.add_argument("part", nargs="?", choices=PARTS)
    p.add_argument("--work", required=True)
    p.add_argument("--sizes", choices=["full", "smoke"], required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--minutes", type=float, default=4)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    sizes = FULL if a.sizes == "full" else SMOKE
    if a.what == "prepare":
        prepare(Path(a.work), sizes)
    else:
        run_part_process(a.part, Path(a.work), sizes, a.device, a.seconds, a.minutes, Path(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
