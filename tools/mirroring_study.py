#!/usr/bin/env python3
"""Does mirroring test-time augmentation help? Every model a benchmark trained, predicted on its task's
out-of-domain test split with and without mirroring, scored by `fomo-nnunet evaluate`.

    nice -n 10 .venv/bin/python tools/mirroring_study.py --work fomo_work

Classification and regression models: `fomo-nnunet predict` without and with `--tta` (every subset of the
checkpoint's mirroring axes: 8 forwards for 3 axes). Segmentation models: nnU-Net's predictor (as
`nnUNetv2_predict`) without mirroring and with mirroring over all three axes, whatever the checkpoint allows
(the tiny recipes switch mirroring off at inference, so their checkpoints allow none). Prints a Markdown
table and writes WORK/mirroring/seedN/summary.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def run(cmd: list[str], env: dict) -> None:
    p = subprocess.run([str(BIN / cmd[0]), *cmd[1:]], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}:\n{(p.stdout + p.stderr)[-3000:]}")


def predict_segmentation(model: Path, folds: list[str], images: Path, out: Path, mirror: bool) -> None:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), folds, "checkpoint_final.pth")
    if mirror:
        predictor.allowed_mirroring_axes = (0, 1, 2)
    predictor.predict_from_files(str(images), str(out), save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)


def first_cases(images: Path, gt: Path, n: int, folder: Path) -> tuple[Path, Path]:
    """Links to the first `n` test cases (images and ground truth) in `folder`."""
    from fomo_nnunet.challenge.inference import group_cases, strip_nifti

    cases = dict(sorted(group_cases(images, len({strip_nifti(f.name)[-4:] for f in images.iterdir()})).items())[:n])
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for files in cases.values():
        for f in files:
            link = folder / "images" / Path(f).name
            link.unlink(missing_ok=True)
            link.symlink_to(f)
    if gt.is_dir():
        (folder / "labels").mkdir(exist_ok=True)
        for case in cases:
            link = folder / "labels" / f"{case}.nii.gz"
            link.unlink(missing_ok=True)
            link.symlink_to(gt / f"{case}.nii.gz")
        return folder / "images", folder / "labels"
    targets = json.loads(gt.read_text())
    (folder / gt.name).write_text(json.dumps({c: targets[c] for c in cases}))
    return folder / "images", folder / gt.name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="a benchmark's work folder (fomo-nnunet benchmark --work)")
    ap.add_argument("--seed", type=int, default=0, help="the benchmark repetition (WORK/runs/seedN), default 0")
    ap.add_argument("--tasks", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    ap.add_argument("--models", nargs="+", default=None, help="only model folders whose name contains one of these")
    ap.add_argument("--max-cases", type=int, default=None, help="only the first N test cases (by name)")
    args = ap.parse_args()
    from fomo_nnunet.paths import nnunet_defaults, trainers_dir
    from fomo_nnunet.tasks import SEGMENTATION, TASKS_BY_NUMBER

    work = Path(args.work).resolve()
    env = dict(os.environ, **nnunet_defaults(work), nnUNet_extTrainer=str(trainers_dir()),
               nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1")
    env["nnUNet_results"] = str(work / "runs" / f"seed{args.seed}" / "nnUNet_results")  # the benchmark's layout
    os.environ.update(env)
    raw, results, study = Path(env["nnUNet_raw"]), Path(env["nnUNet_results"]), work / "mirroring" / f"seed{args.seed}"
    rows = []
    for n in args.tasks:
        task = TASKS_BY_NUMBER[n]
        for dataset in sorted(results.glob(f"Dataset{task.default_dataset_id:03d}_*")):
            for model in sorted(p for p in dataset.iterdir() if p.is_dir()):
                folds = sorted(f.name[5:] for f in model.glob("fold_*") if (f / "checkpoint_final.pth").is_file())
                if not folds:
                    continue
                if args.models and not any(m in model.name for m in args.models):
                    continue
                images = raw / dataset.name / "imagesTs"
                gt = raw / dataset.name / ("labelsTs" if task.kind == SEGMENTATION else "targetsTs.json")
                if args.max_cases:
                    images, gt = first_cases(images, gt, args.max_cases, study / task.key / "cases")
                row = {"task": task.key, "model": model.name, "folds": folds}
                for mirror in (False, True):
                    out = study / task.key / model.name / ("mirrored" if mirror else "plain")
                    t0 = time.time()
                    if task.kind == SEGMENTATION:
                        predict_segmentation(model, folds, images, out, mirror)
                        pred = out
                    else:
                        run(["fomo-nnunet", "predict", "-i", str(images), "-o", str(out), "-m", str(model),
                             "-f", *folds, *(["--tta"] if mirror else [])], env)
                        pred = out / "predictions.csv"
                    seconds = time.time() - t0
                    run(["fomo-nnunet", "evaluate", task.key, "--pred", str(pred), "--gt", str(gt),
                         "-o", str(out) + "_scores"], env)
                    summary = json.loads(Path(str(out) + "_scores", "summary.json").read_text())
                    row["mirrored" if mirror else "plain"] = {"metrics": summary.get("metrics", summary),
                                                             "seconds": round(seconds, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    study.mkdir(parents=True, exist_ok=True)
    (study / "summary.json").write_text(json.dumps(rows, indent=1))
    print("| task | model | metric | no mirroring | mirroring | difference | seconds (no / with) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        for name, plain in r["plain"]["metrics"].items():
            mirrored = r["mirrored"]["metrics"].get(name)
            if isinstance(plain, (int, float)) and isinstance(mirrored, (int, float)):
                print(f"| {r['task']} | {r['model']} | {name} | {plain:.4f} | {mirrored:.4f} | {mirrored - plain:+.4f} | "
                      f"{r['plain']['seconds']} / {r['mirrored']['seconds']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
