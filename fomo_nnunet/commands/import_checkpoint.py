"""`fomo-nnunet import-checkpoint SRC -o DIR`: the organisers' published weights as our checkpoint."""
from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-checkpoint", help="turn an organisers' published checkpoint (asparagus, FOMO25 baseline) into ours",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read a published pretrained checkpoint as data (weights_only: nothing in it runs), recognise "
                    "its network from its tensors, map every encoder tensor (and the decoder, where it has the "
                    "same layout) onto the network our plans describe, and write DIR/checkpoint_final.pth (with "
                    "fomo_metadata) plus DIR/import_report.md and .json: tensors mapped, adapted and left out, and "
                    "why; where each setting came from. Refuses, writing nothing, when the encoder cannot be "
                    "reproduced exactly.\n\n"
                    "Formats: asparagus (FOMO26 organisers, gardening-tools ResidualEncoderUNet: ResEnc-B etc., "
                    "or their UNet), fomo25-baseline (yucca-based FOMO25 baseline and AMAES: U-Net B, U-Net XL). "
                    "Lightning checkpoints (.ckpt) and bare state dicts are read.\n\n"
                    "Then: fomo-nnunet plan transfer -d ID --pretrained DIR")
    p.add_argument("source", help="the published checkpoint (.ckpt / .pt / .pth)")
    p.add_argument("-o", "--output", required=True, help="folder to write checkpoint_final.pth and the report into")
    p.add_argument("--format", default="auto", choices=["auto", "asparagus", "fomo25-baseline"],
                   help="the framework that wrote it (default: auto, from the tensors and hyper-parameters)")
    p.add_argument("--patch", type=int, default=None,
                   help="cubic pretraining patch in voxels, when the checkpoint does not record it or you know "
                        "better (default: recorded hyper-parameter, else 160)")
    p.add_argument("--spacing", type=float, default=None,
                   help="isotropic spacing in mm the network is to see (default: 1.0, the organisers' data)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fomo_nnunet.checkpoint_import import CHECKPOINT_FILE, REPORT_TEXT, import_checkpoint
    from fomo_nnunet.transfer import CheckpointError

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
