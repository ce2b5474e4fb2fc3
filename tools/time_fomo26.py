#!/usr/bin/env python3
"""Seconds per case of `fomo-nnunet fomo26` for a model of a given architecture preset.

    .venv/bin/python tools/time_fomo26.py --arch resenc_b --tasks 2 3 --work /tmp/time_fomo26

Builds, in WORK, a 1 mm brain-sized case (the MNI152 T1 template nilearn ships, 197x233x189),
tiny raw datasets of it for the chosen tasks, plans transferred from an UNTRAINED checkpoint of the
preset, untrained model folders and a bundle; then runs the challenge entry on the case with and
without mirroring test-time augmentation and prints the `--verbose` timings and, per case, the whole
process's wall-clock and CPU seconds (user + system: what the entry costs, whatever else runs on the
machine). Untrained weights time exactly like trained ones.

    .venv/bin/python tools/time_fomo26.py --arch tiny --baseline-rev main --repeat 3

`--baseline-rev REV` (or `--baseline DIR`, a folder holding an installed-layout `fomo_nnunet` package)
times every case with that code as well, alternating with this checkout on the same bundle, and prints
the ratios: before/after figures from one run on one machine.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stage_revision(rev: str, folder: Path) -> Path:
    """`git archive REV` of this repository laid out as installed (plans/ and trainers/ inside fomo_nnunet/)."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "fomo_nnunet", "plans", "trainers"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    for sub in ("plans", "trainers"):
        os.replace(folder / sub, folder / "fomo_nnunet" / sub)
    return folder


def timed(cmd: list[str], env: dict, cwd: Path) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run one process; its wall-clock seconds and CPU seconds (user + system, its children included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return p, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resenc_b", help="architecture preset (default: resenc_b)")
    p.add_argument("--tasks", type=int, nargs="+", default=[2, 3], help="tasks to time (default: 2 3)")
    p.add_argument("--work", default="time_fomo26_work", help="work folder")
    p.add_argument("--mirroring", choices=["both", "on", "off"], default="both")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device of the entry (default: cpu)")
    p.add_argument("--template", default=None, metavar="NIFTI",
                   help="the case image (default: nilearn's MNI152 1 mm T1 template)")
    p.add_argument("--repeat", type=int, default=1, help="runs per case and code version (the median is shown)")
    p.add_argument("--baseline", default=None, metavar="DIR",
                   help="also time the code in DIR (a folder holding fomo_nnunet/ with plans/ and trainers/ inside)")
    p.add_argument("--baseline-rev", default=None, metavar="REV",
                   help="also time git revision REV of this repository (staged into WORK/baseline_code)")
    args = p.parse_args()
    if args.repeat < 1:
        p.error("--repeat must be >= 1")

    work = Path(args.work).resolve()
    from fomo_nnunet.paths import nnunet_defaults, trainers_dir

    os.environ.update(nnunet_defaults(work))
    os.environ["nnUNet_extTrainer"] = str(trainers_dir())
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(os.environ[k]).mkdir(parents=True, exist_ok=True)

    from fomo_nnunet.benchmarks.throughput import prepare_entry_timing

    bundle, case_args = prepare_entry_timing(work, args.arch, args.tasks, args.template)
    from fomo_nnunet.tasks import TASKS_BY_NUMBER

    baseline = Path(args.baseline).resolve() if args.baseline else None
    if args.baseline_rev:
        baseline = stage_revision(args.baseline_rev, work / "baseline_code")
    versions = ([("before", baseline)] if baseline else []) + [("after" if baseline else "this", None)]
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.mirroring]
    rows = []
    for n in args.tasks:
        task = TASKS_BY_NUMBER[n]
        suffix = {"nifti_labels": ".nii.gz", "npy_embedding": ".npy"}.get(task.output, ".txt")
        for mirror in modes:
            out = work / "out" / f"{task.key}_{'tta' if mirror else 'plain'}{suffix}"
            out.parent.mkdir(exist_ok=True)
            cmd = [sys.executable, "-m", "fomo_nnunet.cli", "fomo26", task.key, *case_args[n], "--output", str(out),
                   "--bundle", str(bundle), "--verbose", "--device", args.device] + ([] if mirror else ["--no-mirroring"])
            runs: dict[str, list] = {name: [] for name, _ in versions}
            for _ in range(args.repeat):
                for name, code in versions:  # alternating, so a change in machine load hits both alike
                    env = dict(os.environ)
                    if code is not None:
                        env["PYTHONPATH"] = os.pathsep.join([str(code), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
                    proc, wall, cpu = timed(cmd, env, work)  # not the checkout: python -m puts the cwd first
                    if proc.returncode:
                        print(proc.stderr[-3000:], file=sys.stderr)
                        return 1
                    line = next(ln for ln in proc.stderr.splitlines() if "timing:" in ln)
                    runs[name].append((wall, cpu, line.split("timing:", 1)[1].strip()))
                    print(f"{task.key} mirroring {'on ' if mirror else 'off'} {name}: process {wall:.2f} s wall, "
                          f"{cpu:.2f} s CPU; {runs[name][-1][2]}", flush=True)
            for name, _ in versions:
                rows.append((task.key, "on" if mirror else "off", name,
                             statistics.median(r[0] for r in runs[name]), statistics.median(r[1] for r in runs[name]),
                             runs[name][-1][2]))
    print(f"\n{args.arch}, input {args.template or 'MNI152 T1 template'} at 1 mm, device {args.device}, {os.cpu_count()} CPU(s), "
          f"median of {args.repeat} run(s)")
    print("| task | mirroring | code | process wall s | process CPU s | seconds per step (last run) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.2f} | {r[5]} |")
    if baseline:
        print("\n| task | mirroring | wall after/before | CPU after/before |\n|---|---|---|---|")
        for b, a in zip(rows[0::2], rows[1::2]):
            print(f"| {a[0]} | {a[1]} | {a[3] / b[3]:.2f} | {a[4] / b[4]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
