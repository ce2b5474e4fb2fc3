"""`fomo-nnunet plan`: write nnU-Net plans files for pretraining and for transfer to a task."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="write fomoPretrainPlans / fomoPlans plans files",
                       description="Write nnU-Net plans files. Then run nnUNetv2_preprocess with -plans_name.")
    psub = p.add_subparsers(dest="plan_command", metavar="WHAT")

    pre = psub.add_parser(
        "pretrain", help="plans for MAE pretraining on a converted corpus (fomoPretrainPlans.json)",
        description="Write fomoPretrainPlans.json into $nnUNet_preprocessed/DatasetNNN_*: a fixed "
                    "foundation-model architecture (--arch), patch and spacing, z-score per scan. nnU-Net's "
                    "fingerprint is extracted first when missing. Next: nnUNetv2_preprocess -d ID "
                    "-plans_name fomoPretrainPlans -c 3d_fullres")
    pre.add_argument("-d", "--dataset", type=int, required=True, help="dataset ID of the converted corpus")
    from fomo_nnunet.plans.presets import ARCH_PRESETS, PRETRAIN_PLANS_NAME

    pre.add_argument("--arch", default="resenc_b", choices=list(ARCH_PRESETS),
                     help="architecture preset (default: resenc_b); " + "; ".join(f"{k}: {v.description}" for k, v in ARCH_PRESETS.items()))
    pre.add_argument("--patch", type=int, default=None,
                     help="cubic patch edge in voxels (default: the preset's, 160 for the real presets, 32 for tiny)")
    pre.add_argument("--spacing", type=float, default=None,
                     help="isotropic target spacing in mm (default: the preset's, 1.0 for the real presets, 4.0 for tiny)")
    pre.add_argument("--batch-size", type=int, default=None, help="batch size (default: the preset's)")
    pre.add_argument("--plans-name", default=PRETRAIN_PLANS_NAME, help="plans identifier (default: fomoPretrainPlans)")
    pre.add_argument("-np", "--num-processes", type=int, default=2,
                     help="processes for nnU-Net's fingerprint extraction (default: 2)")
    pre.set_defaults(func=run_pretrain)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def run_pretrain(args: argparse.Namespace) -> int:
    from fomo_nnunet.paths import require_env

    require_env("nnUNet_raw"), require_env("nnUNet_preprocessed")
    from fomo_nnunet.plans.pretrain_planner import plan_pretrain

    try:
        plans = plan_pretrain(args.dataset, args.arch, args.patch, args.spacing, args.batch_size,
                              args.plans_name, args.num_processes)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    c = plans["configurations"]["3d_fullres"]
    print(f"{args.plans_name}: {args.arch}, patch {c['patch_size']}, spacing {c['spacing']}, "
          f"batch {c['batch_size']}")
    print(f"next: nnUNetv2_preprocess -d {args.dataset} -plans_name {args.plans_name} -c 3d_fullres")
    return 0
