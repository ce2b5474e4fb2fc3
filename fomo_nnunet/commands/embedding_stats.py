"""`fomo-nnunet embedding-stats CHECKPOINT --images FOLDER`: add embedding statistics to a checkpoint."""
from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Compute the per-dimension mean and standard deviation of a pretrained checkpoint's embeddings over a
folder of brain scans and write a copy of the checkpoint that carries them (fomo_metadata
"embedding_stats"). From then on `fomo-nnunet embed`, `fomo-nnunet fomo26 task6/task7` and the
container standardise every embedding of that checkpoint with them: (v - mean) / std per dimension,
so that each dimension has a scale near 1 on brain scans (the organisers' fomo-lp probe trains SGD
heads on the raw vectors with a fixed learning-rate sweep, so the scale matters).

`nnUNetv2_train ... -tr nnUNetTrainerFomoMAE` stores these statistics over its own pretraining data
in checkpoint_final.pth already; this command is for older and imported checkpoints
(`fomo-nnunet import-checkpoint`). Give it scans like the pretraining corpus (not the probing task's
own cases). Each image is preprocessed exactly as `fomo-nnunet embed` does (cropped to its non-zero
region, normalised, resampled to the checkpoint's spacing, centre-cropped or padded to its patch);
statistics already in the checkpoint are replaced. Unreadable images are skipped and listed.

--pooling chooses the embedding itself: "deepest" (the global average of the deepest encoder stage,
the organisers' rule) or "stages" (the global average of every encoder stage, concatenated shallow to
deep: 8+16+32+64 = 120 values for the tiny network). The copy records it (fomo_metadata
"embedding_pooling") beside the statistics computed with it, so the two always agree and `embed`, task
6/7 and the container write that embedding. Without --pooling the checkpoint's own is kept ("deepest"
when it records none).
"""

EXAMPLES = """\
example:
  fomo-nnunet embedding-stats pretrained/amaes_resenc_b --images $nnUNet_raw/Dataset900_FOMOPretrain/imagesTr \\
      -o pretrained/amaes_resenc_b_stats/checkpoint_final.pth
  fomo-nnunet embedding-stats pretrained/amaes_resenc_b --images CORPUS_IMAGES --pooling stages \\
      -o pretrained/amaes_resenc_b_stages/checkpoint_final.pth     # every stage pooled
"""


def register(sub: argparse._SubParsersAction) -> None:
    from fomo_nnunet.models.embedding_pooling import POOLINGS

    p = sub.add_parser("embedding-stats", help="add embedding statistics (probe-ready embeddings) to a checkpoint",
                       description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the pretraining checkpoint (.pth) or its results folder")
    p.add_argument("--images", required=True, metavar="FOLDER",
                   help="folder of single-channel .nii.gz scans (e.g. the pretraining corpus' imagesTr)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", metavar="OUT.pth", help="write the copy with statistics here")
    where.add_argument("--in-place", action="store_true", help="overwrite the checkpoint itself (atomically)")
    p.add_argument("--max-cases", type=int, default=512,
                   help="use at most this many images, evenly spaced over the sorted names (default: 512)")
    p.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="the embedding's pooling, recorded in the copy with its statistics: deepest (the deepest "
                        "stage's global average) or stages (every stage's, concatenated shallow to deep) "
                        "(default: the checkpoint's own)")
    p.add_argument("-device", "--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fomo_nnunet.models.checkpoints import find_checkpoint
    from fomo_nnunet.models.embedding_stats import save_with_stats
    from fomo_nnunet.challenge.inference import images_embedding_stats

    try:
        source = find_checkpoint(args.checkpoint)
        out = Path(source if args.in_place else args.output)
        if not args.in_place and out.resolve() == Path(source).resolve():
            raise ValueError(f"-o {out} is the input checkpoint; say --in-place to overwrite it")
        stats, failed = images_embedding_stats(source, args.images, args.max_cases, args.device,
                                               pooling=args.pooling)
        save_with_stats(source, stats, out, pooling=args.pooling)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for f, why in failed.items():
        print(f"  skipped: {f}: {why}", file=sys.stderr)
    from fomo_nnunet.models.embedding_stats import POOLING_KEY, pooling_of
    from fomo_nnunet.models.transfer import METADATA_KEY, load_checkpoint_safely

    print(f"{stats.summary()}; pooling {pooling_of(load_checkpoint_safely(out)[METADATA_KEY], str(out))!r} "
          f"({POOLING_KEY})")
    print(f"wrote {out} (from {source}; {len(failed)} image(s) skipped)")
    return 0
