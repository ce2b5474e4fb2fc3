"""`fomo-nnunet preprocess`: nnU-Net's preprocessing, sharded, resumable and atomic per case."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess", help="nnUNetv2_preprocess, sharded over a job array and resumable",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Preprocess a planned dataset with the plans' own nnU-Net preprocessor class: the same
files, byte for byte, in the same place as `nnUNetv2_preprocess -d ID -plans_name P -c C`
($nnUNet_preprocessed/DatasetNNN_*/<data identifier>/<case>.b2nd, <case>_seg.b2nd, <case>.pkl, and
gt_segmentations/), but:
  - the output folder is never deleted; a rerun skips the cases already there, so a killed run
    loses at most the cases in flight;
  - each case is written into a hidden .fomo_partial/ folder and moved into place, its .b2nd last
    (nnU-Net lists cases by that file): a case is complete or absent, never half-written;
  - --shard i/N takes the cases whose index in the sorted case list is i modulo N: the N tasks of a
    job array write into one folder without touching each other's cases;
  - a referenced source that was moved or deleted since the conversion is named before any work;
  - a folder preprocessed with other plans is refused (.fomo_preprocess.json records the plans).
SIGINT/SIGTERM stop the workers within a few seconds and leave no partial case.""",
        epilog="""examples:
  fomo-nnunet preprocess -d 900 -plans_name fomoPretrainPlans -c 3d_fullres -np 32
  fomo-nnunet preprocess -d 900 -plans_name fomoPretrainPlans -c 3d_fullres -np 32 --shard $SLURM_ARRAY_TASK_ID/8
  fomo-nnunet preprocess -d 900 -plans_name fomoPretrainPlans -c 3d_fullres --verify     # after the array
  fomo-nnunet preprocess -d 900 --verify --shard $SLURM_ARRAY_TASK_ID/8 -np 32     # or as an array""")
    p.add_argument("-d", "--dataset", required=True, help="dataset ID or name")
    p.add_argument("-plans_name", "--plans-name", dest="plans_name", default="fomoPretrainPlans",
                   help="plans identifier (default: fomoPretrainPlans)")
    p.add_argument("-c", "--configuration", default="3d_fullres", help="configuration (default: 3d_fullres)")
    p.add_argument("--shard", default=None, metavar="I/N", help="only the cases with index %% N == I (default: all)")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--verify", action="store_true",
                   help="preprocess nothing: list the cases (of all shards, or of --shard's) that are missing or "
                        "cannot be read in full; exit 1 when there are any")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fomo_nnunet import exit_codes
    from fomo_nnunet.paths import require_env

    if args.num_processes < 1:
        print(f"error: -np must be at least 1, got {args.num_processes}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    try:
        require_env("nnUNet_raw"), require_env("nnUNet_preprocessed")
    except SystemExit as e:
        print(e, file=sys.stderr)
        return exit_codes.BAD_INPUT
    from fomo_nnunet.data import preprocess as P

    dataset = int(args.dataset) if str(args.dataset).isdigit() else args.dataset
    try:
        if args.verify:
            found = P.verify(dataset, args.plans_name, args.configuration, args.num_processes,
                             progress=not args.no_progress, shard=args.shard)
            for kind in ("missing", "unreadable"):
                for line in found[kind][:50]:
                    print(f"{kind}: {line}")
                if len(found[kind]) > 50:
                    print(f"... and {len(found[kind]) - 50} more {kind}")
            print(f"{len(found['missing'])} missing, {len(found['unreadable'])} unreadable")
            return exit_codes.FAILED if found["missing"] or found["unreadable"] else exit_codes.OK
        res = P.preprocess(dataset, args.plans_name, args.configuration, args.shard, args.num_processes,
                           progress=not args.no_progress)
    except (P.PreprocessError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    print(f"{res.output}: {res.done} preprocessed, {res.already_done} already done "
          f"(of {res.in_shard} in this shard, {res.total} in total)")
    if res.leftovers:
        print(f"  removed the partial cases of {len(res.leftovers)} interrupted runs")
    return exit_codes.OK
