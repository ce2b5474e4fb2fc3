#!/usr/bin/env python3
"""Seconds per case of `fomo-nnunet fomo26` for a model of a given architecture preset.

    .venv/bin/python tools/time_fomo26.py --arch resenc_b --tasks 2 3 --work /tmp/time_fomo26

Builds, in WORK, a 1 mm brain-sized case (the MNI152 T1 template nilearn ships, 197x233x189),
tiny raw datasets of it for the chosen tasks, plans transferred from an UNTRAINED checkpoint of the
preset, untrained model folders and a bundle; then runs the challenge entry on the case with and
without mirroring test-time augmentation and prints the `--verbose` timings. Untrained weights time
exactly like trained ones.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resenc_b", help="architecture preset (default: resenc_b)")
    p.add_argument("--tasks", type=int, nargs="+", default=[2, 3], help="tasks to time (default: 2 3)")
    p.add_argument("--work", default="time_fomo26_work", help="work folder")
    p.add_argument("--mirroring", choices=["both", "on", "off"], default="both")
    args = p.parse_args()

    work = Path(args.work).resolve()
    from fomo_nnunet.paths import nnunet_defaults, trainers_dir

    os.environ.update(nnunet_defaults(work))
    os.environ["nnUNet_extTrainer"] = str(trainers_dir())
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(os.environ[k]).mkdir(parents=True, exist_ok=True)

    import nibabel as nib
    import numpy as np
    import torch
    from nilearn.datasets import load_mni152_template

    from fomo_nnunet.bench import write_untrained_model
    from fomo_nnunet.bundle import build_bundle
    from fomo_nnunet.checkpoints import metadata_from_preset
    from fomo_nnunet.plans.transfer_planner import plan_transfer
    from fomo_nnunet.tasks import TASKS_BY_NUMBER
    from fomo_nnunet.transfer import PretrainMetadata

    template = load_mni152_template(resolution=1)
    brain = np.asanyarray(template.dataobj).astype(np.float32)
    affine = template.affine
    case_dir = work / "case"
    case_dir.mkdir(parents=True, exist_ok=True)

    ckpt = work / f"untrained_{args.arch}.pth"
    if not ckpt.is_file():
        meta = metadata_from_preset(args.arch)
        meta["objective"] = "none (untrained, for timing)"
        torch.manual_seed(0)
        net = PretrainMetadata.from_dict(meta).build_network(num_outputs=1)
        torch.save({"network_weights": net.state_dict(), "fomo_metadata": meta}, ckpt)

    models, case_args = {}, {}
    for n in args.tasks:
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
            if task.kind == "segmentation":  # any foreground will do
                mask = np.zeros_like(mask)
                mask[90:100, 110:120, 80:90] = task.max_label
            for i in range(2):  # nnU-Net's fingerprint wants cases; two copies of the one volume do
                for c, f in enumerate(files.values()):
                    os.link(f, raw / "imagesTr" / f"case{i}_{c:04d}.nii.gz")
                nib.save(nib.Nifti1Image(mask, affine), raw / "labelsTr" / f"case{i}.nii.gz")
            labels = task.labels if task.kind == "segmentation" else {"background": 0, "brain": 1}
            (raw / "dataset.json").write_text(json.dumps({
                "channel_names": {str(i): c for i, c in enumerate(task.channel_names)}, "labels": labels,
                "numTraining": 2, "file_ending": ".nii.gz", "fomo_task": n}))
            (raw / "targets.json").write_text(json.dumps({"case0": 0, "case1": 1}))
            plan_transfer(task.default_dataset_id, str(ckpt), num_processes=1)
        models[n] = write_untrained_model(Path(os.environ["nnUNet_preprocessed"]) / task.dataset_name,
                                          os.environ["nnUNet_results"])
    bundle = work / "bundle"
    build_bundle(bundle, models, str(ckpt) if any(n in (6, 7) for n in args.tasks) else None)

    modes = {"both": [True, False], "on": [True], "off": [False]}[args.mirroring]
    rows = []
    for n in args.tasks:
        task = TASKS_BY_NUMBER[n]
        suffix = {"nifti_labels": ".nii.gz", "npy_embedding": ".npy"}.get(task.output, ".txt")
        for mirror in modes:
            out = work / "out" / f"{task.key}_{'tta' if mirror else 'plain'}{suffix}"
            out.parent.mkdir(exist_ok=True)
            cmd = [sys.executable, "-m", "fomo_nnunet.cli", "fomo26", task.key, *case_args[n], "--output", str(out),
                   "--bundle", str(bundle), "--verbose", "--device", "cpu"] + ([] if mirror else ["--no-mirroring"])
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                print(p.stderr[-3000:], file=sys.stderr)
                return 1
            line = next(ln for ln in p.stderr.splitlines() if "timing:" in ln)
            rows.append((task.key, "on" if mirror else "off", line.split("timing:", 1)[1].strip()))
            print(f"{task.key} mirroring {'on ' if mirror else 'off'}: {rows[-1][2]}", flush=True)
    print(f"\n{args.arch}, input {brain.shape} at 1 mm, device cpu, {os.cpu_count()} CPU(s)")
    print("| task | mirroring | seconds per step |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
