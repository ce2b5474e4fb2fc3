"""`fomo-nnunet export-checkpoint CKPT -o OUT --format asparagus|nnssl`: our checkpoint for other frameworks."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-checkpoint", help="write our pretrained checkpoint in asparagus's or nnssl's form",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a fomo_nnunet pretrained checkpoint (a ResidualEncoderUNet) so that another framework "
                    "loads it:\n"
                    "  asparagus: OUT/checkpoints/last.ckpt (Lightning-style, gardening-tools ResidualEncoderUNet "
                    "names under 'model.') and OUT/hydra/config.yaml (patch size, mask ratio and unit), an "
                    "asparagus run folder;\n"
                    "  nnssl: OUT/checkpoint_final.pth (network_weights plus nnssl_adaptation_plan: architecture, "
                    "patch, spacing, normalisation, encoder and stem keys) and OUT/adaptation_plan.json.\n"
                    "Importing the export (fomo-nnunet import-checkpoint) gives back the same weights and settings.")
    p.add_argument("checkpoint", help="our checkpoint: a .pth or a results folder")
    p.add_argument("-o", "--output", required=True, help="folder to write into")
    p.add_argument("--format", required=True, choices=["asparagus", "nnssl"], help="the framework to write for")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fomo_nnunet.models.formats.export import export_checkpoint
    from fomo_nnunet.models.transfer import CheckpointError

    try:
        report = export_checkpoint(args.checkpoint, args.output, args.format)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    print(f"{report.source}: {report.tensors} tensors ({report.parameters:,} parameters) in {report.format} form")
    for note in report.notes:
        print(f"  note: {note} ({len(report.left_out)} tensors)")
    for f in report.files:
        print(f"  wrote {f}")
    return 0
