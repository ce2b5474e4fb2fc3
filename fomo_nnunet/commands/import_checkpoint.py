"""`fomo-nnunet import-checkpoint SRC -o DIR`: the organisers' published weights as our checkpoint."""
from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-checkpoint", help="turn a published checkpoint (asparagus, FOMO25 baseline, nnssl) into ours",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read a published pretrained checkpoint as data (weights_only: nothing in it runs), recognise "
                    "its network from its tensors, map every encoder tensor (and the decoder, where it has the "
                    "same layout) onto the network our plans describe, and write DIR/checkpoint_final.pth (with "
                    "fomo_metadata) plus DIR/import_report.md and .json: tensors mapped, adapted and left out, and "
                    "why; where each setting came from. Refuses, writing nothing, when the encoder cannot be "
                    "reproduced exactly.\n\n"
                    "Formats: asparagus (FOMO26 organisers, gardening-tools ResidualEncoderUNet: ResEnc-B etc., "
                    "their UNet, or Primus; an asparagus run's hydra/config.yaml beside checkpoints/ gives patch "
                    "and masking), fomo25-baseline (yucca-based FOMO25 baseline and AMAES: U-Net B, U-Net XL), "
                    "nnssl (OpenMind models: checkpoint_final.pth with its adaptation plan; ResEnc-L, Primus). "
                    "Lightning checkpoints (.ckpt), bare state dicts and nnssl checkpoints are read. A --format "
                    "that contradicts the file is refused.\n\n"
                    "Then: fomo-nnunet plan transfer -d ID --pretrained DIR")
    p.add_argument("source", help="the published checkpoint (.ckpt / .pt / .pth)")
    p.add_argument("-o", "--output", required=True, help="folder to write checkpoint_final.pth and the report into")
    p.add_argument("--format", default="auto", choices=["auto", "asparagus", "fomo25-baseline", "nnssl"],
                   help="the framework that wrote it (default: auto, from the tensors and hyper-parameters)")
    p.add_argument("--patch", type=int, default=None,
                   help="cubic pretraining patch in voxels, when the checkpoint does not record it or you know "
                        "better (default: the nnssl adaptation plan, the asparagus run's Hydra config or the "
                        "hyper-parameters, else 160)")
    p.add_argument("--spacing", type=float, default=None,
                   help="isotropic spacing in mm the network is to see (default: the nnssl adaptation plan's, else 1.0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fomo_nnunet.models.checkpoint_import import CHECKPOINT_FILE, REPORT_TEXT, import_checkpoint
    from fomo_nnunet.models.transfer import CheckpointError

    start = time.perf_counter()
    try:
        report = import_checkpoint(args.source, args.output, args.format, args.patch, args.spacing)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    print(f"{args.source}: {report.architecture} ({report.format})")
    print(f"  {report.summary()}")
    for note in report.assumptions:
        print(f"  assumed: {note}")
    print(f"  wrote {args.output}/{CHECKPOINT_FILE} and {args.output}/{REPORT_TEXT} ({time.perf_counter() - start:.1f} s)")
    return 0
