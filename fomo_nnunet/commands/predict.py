"""`fomo-nnunet predict` (classification, regression models) and `fomo-nnunet embed` (frozen encoder)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PREDICT_EXAMPLES = """\
example:
  fomo-nnunet predict -i $nnUNet_raw/Dataset901_FOMO1Infarct/imagesTs -o preds/task1 \\
      -m $nnUNet_results/Dataset901_FOMO1Infarct/nnUNetTrainerFomoCls__fomoPlans__3d_fullres -f 0 1 2 3 4

IMAGES_FOLDER uses nnU-Net's naming (CASE_0000.nii.gz, CASE_0001.nii.gz, ... one file per channel).
Each case goes through nnU-Net's preprocessing of the model's plans, one centred crop of the brain
(as in training), mirroring (--tta / --no-tta; it prints which), and the mean over the folds. Writes
OUT/predictions.csv: case_id, prediction (probability of the positive class, or the value in the
task's unit, e.g. years), and one probability column per class for classification models.
Segmentation models are predicted with nnUNetv2_predict.
"""

EMBED_EXAMPLES = """\
example:
  fomo-nnunet embed -i $nnUNet_raw/Dataset906_FOMO6Probing/imagesTs -o emb/task6 \\
      --checkpoint $nnUNet_results/Dataset900_FOMOPretrain/nnUNetTrainerFomoMAE__fomoPretrainPlans__3d_fullres

Pooling rule: each image is preprocessed like the pretraining data (cropped to its non-zero region,
normalised over it, resampled to the checkpoint's spacing), centre-cropped or zero-padded to the
pretraining patch, and passed through the FROZEN encoder; the embedding is the global average pool
of the deepest encoder stage (1-D float32, the same length for every image), or, when the checkpoint
records embedding_pooling "stages" (`fomo-nnunet embedding-stats --pooling stages`), of every encoder
stage, concatenated shallow to deep. When the checkpoint
carries embedding statistics of its pretraining corpus (nnUNetTrainerFomoMAE stores them in
checkpoint_final.pth; `fomo-nnunet embedding-stats` adds them to others), each dimension is
standardised with them, (v - mean) / std, so its scale is near 1 on brain scans; without them the
vectors are raw. The command prints which, and the pooling. One OUT/<case>.npy per image (nnU-Net's _0000 suffix
dropped); existing files are kept (rerun-safe) unless --overwrite.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from fomo_nnunet.challenge.mirroring import MIRRORING_DEFAULT, on_off

    p = sub.add_parser("predict", help="predict with a classification or regression model (CSV)",
                       description="Predict image-level targets with a trained nnUNetTrainerFomoCls/Reg model.",
                       epilog=PREDICT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True, metavar="IMAGES_FOLDER", help="folder of CASE_XXXX.nii.gz")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="folder for predictions.csv")
    p.add_argument("-m", "--model", required=True, metavar="MODEL_FOLDER",
                   help="the trainer's results folder (<trainer>__<plans>__3d_fullres, holding fold_*)")
    p.add_argument("-f", "--folds", nargs="+", default=["all"], help="folds to ensemble (default: all)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth",
                   help="checkpoint file name in each fold (default: checkpoint_final.pth)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average over every mirroring the checkpoint allows (8x the forwards), or not (--no-tta); "
                        f"default: {on_off(MIRRORING_DEFAULT)}, as `fomo-nnunet fomo26` (docs/results/mirroring.md); "
                        "the command prints which")
    p.add_argument("-device", "--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.set_defaults(func=run_predict)

    e = sub.add_parser("embed", help="1-D embeddings of images from the frozen pretrained encoder (.npy)",
                       description="Embeddings for linear probing (FOMO26 tasks 6 and 7).",
                       epilog=EMBED_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("-i", "--input", required=True, metavar="IMAGES_FOLDER", help="folder of .nii.gz images")
    e.add_argument("-o", "--output", required=True, metavar="OUT", help="folder for <case>.npy files")
    e.add_argument("--checkpoint", required=True,
                   help="the pretraining checkpoint (.pth) or its results folder")
    e.add_argument("--overwrite", action="store_true", help="recompute embeddings that exist already")
    e.add_argument("-device", "--device", default="cpu", help="cpu or cuda (default: cpu)")
    e.set_defaults(func=run_embed)


def run_predict(args: argparse.Namespace) -> int:
    from fomo_nnunet.challenge.inference import predict_folder
    from fomo_nnunet.challenge.mirroring import MIRRORING_DEFAULT

    mirror = MIRRORING_DEFAULT if args.tta is None else args.tta
    try:
        path = predict_folder(args.input, args.output, args.model, args.folds, args.checkpoint, mirror, args.device,
                              log=print)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def run_embed(args: argparse.Namespace) -> int:
    from fomo_nnunet.challenge.inference import embed_folder

    try:
        report = embed_folder(args.input, args.output, args.checkpoint, args.device, overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report["scaling"])
    print(f"embeddings of length {report['length']} in {args.output}: {report['written']} written, "
          f"{report['skipped']} already there, {len(report['failed'])} failed")
    for f, why in report["failed"].items():
        print(f"  failed: {f}: {why}", file=sys.stderr)
    if report["failed"]:
        Path(args.output, "embed_failures.json").write_text(json.dumps(report["failed"], indent=1))
    return 1 if report["failed"] else 0
