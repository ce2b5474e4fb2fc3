"""`fomo-nnunet env`: the shell lines that let nnU-Net find our trainers."""
from __future__ import annotations

import argparse
import shlex


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "env", help="print the export lines for nnUNet_extTrainer and the nnU-Net folders",
        description="Print `export` lines: nnUNet_extTrainer (where nnU-Net finds the fomo trainers) "
                    "and nnUNet_raw / nnUNet_preprocessed / nnUNet_results (kept when already set, "
                    "else folders under --work). Use as: eval \"$(fomo-nnunet env)\"")
    p.add_argument("--work", default="fomo_work",
                   help="work folder for the nnU-Net folders that are not set (default: ./fomo_work)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fomo_nnunet.paths import environment

    for k, v in environment(args.work).items():
        print(f"export {k}={shlex.quote(v)}")
    return 0
