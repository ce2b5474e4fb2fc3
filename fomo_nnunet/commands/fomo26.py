"""`fomo-nnunet fomo26` (the challenge entry, one case) and `fomo-nnunet bundle` (the models it runs)."""
from __future__ import annotations

import argparse
import sys

from fomo_nnunet.tasks import EMBEDDING, TASKS, get_task, task_choices


def register(sub: argparse._SubParsersAction) -> None:
    from fomo_nnunet import exit_codes
    from fomo_nnunet.challenge.bundle import BUNDLE_ENV, DEFAULT_BUNDLE
    from fomo_nnunet.challenge.mirroring import MIRRORING_DEFAULT, on_off

    lines = [f"  {t.key} ({t.name}, {t.kind}): " + " ".join(
        "[" + " | ".join(f"--{a}" for a in c.cli_args) + "]" if c.is_alternative else f"--{c.cli_args[0]}"
        for c in t.channels) + f" -> {t.output}" for t in TASKS]
    p = sub.add_parser(
        "fomo26", help="run one FOMO26 challenge case with the bundled model (the container's entry)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read the task's NIfTI inputs, resample them onto the reference (first) channel's grid, run the "
                    "bundled model (all folds, ensembled) and write --output as the official validator requires: "
                    ".txt with one float (probabilities in [0,1]), an integer NIfTI in the reference input's "
                    "geometry, or a 1-D float32 .npy. Inputs are read-only.\n\n"
                    "Before the model runs, every input header is checked (shape, data type, affine, size the "
                    "file can hold, channels' fields of view overlapping the first's), --output is checked (a "
                    "file name with the task's suffix, not an input, not a folder, in a folder that can be "
                    "created) and the bundle's files are checked. The output is written to a temporary file in "
                    "its folder and renamed, with the mode the umask gives.\n\n"
                    "Tasks and their arguments:\n" + "\n".join(lines) + "\n\n" + exit_codes.TABLE)
    p.add_argument("task", choices=task_choices(), metavar="TASK", help="task1 .. task7 (or the task's name)")
    args = sorted({a for t in TASKS for a in t.cli_args}, key=["flair", "dwi", "adc", "t2s", "swi", "t1", "t2",
                                                                 "input"].index)
    for a in args:
        p.add_argument(f"--{a}", default=None, metavar="NIFTI", help=f"the {a} image")
    p.add_argument("--output", required=True, help="output file (.txt, .nii.gz or .npy, by task)")
    p.add_argument("--bundle", default=None,
                   help=f"model bundle folder (default: ${BUNDLE_ENV}, else {DEFAULT_BUNDLE})")
    mirroring = p.add_mutually_exclusive_group()
    mirroring.add_argument("--mirroring", dest="mirroring", action="store_true", default=None,
                           help="mirroring test-time augmentation over the axes the checkpoint allows (8x the "
                                f"forwards); default: {on_off(MIRRORING_DEFAULT)}, as `fomo-nnunet predict` "
                                "(docs/results/mirroring.md); a note on stderr says which")
    mirroring.add_argument("--no-mirroring", dest="mirroring", action="store_false", help="no mirroring")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--verbose", action="store_true", help="print the seconds each step took (and tracebacks)")
    p.set_defaults(func=run_fomo26)

    b = sub.add_parser(
        "bundle", help="gather the trained models and the pretrained encoder into one bundle folder",
        description="Copy each task's model (plans.json, dataset.json, the chosen folds' weights without optimiser "
                    "state) and the pretrained checkpoint for tasks 6/7 into one folder with a manifest.json. "
                    "Refuses models that were not all finetuned from the SAME pretrained checkpoint (the "
                    "challenge rule) and from-scratch models.")
    b.add_argument("-o", "--output", required=True, help="bundle folder to (re)create")
    for t in TASKS:
        if t.kind != EMBEDDING:
            b.add_argument(f"--{t.key}", default=None, metavar="RESULTS_FOLDER",
                           help=f"{t.name}: trainer output folder (<trainer>__fomoPlans__3d_fullres)")
    b.add_argument("--embedding", default=None, metavar="CHECKPOINT",
                   help="the pretrained checkpoint (.pth or its results folder) for tasks 6 and 7")
    b.add_argument("-f", "--folds", nargs="+", default=None, help="folds to include (default: all that have one)")
    b.add_argument("--checkpoint", default="checkpoint_final.pth",
                   help="which checkpoint of each fold (default: checkpoint_final.pth)")
    b.set_defaults(func=run_bundle)


def run_fomo26(args: argparse.Namespace) -> int:
    from fomo_nnunet import exit_codes
    from fomo_nnunet.challenge.bundle import BundleError, default_bundle_dir
    from fomo_nnunet.challenge.entry import run_case
    from fomo_nnunet.challenge.entry_io import FomoInputError

    from fomo_nnunet.challenge.mirroring import MIRRORING_DEFAULT

    task = get_task(args.task)
    given = {a: getattr(args, a) for a in {a for t in TASKS for a in t.cli_args}}
    try:
        mirror = MIRRORING_DEFAULT if args.mirroring is None else args.mirroring
        run_case(task, given, args.output, args.bundle or default_bundle_dir(), mirror=mirror,
                 device=args.device, verbose=args.verbose)
    except FomoInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_codes.BAD_BUNDLE
    except Exception as e:  # one line for the container log; the traceback with --verbose
        if args.verbose:
            raise
        from fomo_nnunet.io.nifti_checks import first_line

        print(f"error: {task.key} failed: {first_line(e, 300)}", file=sys.stderr)
        return exit_codes.FAILED
    return exit_codes.OK


def run_bundle(args: argparse.Namespace) -> int:
    from fomo_nnunet.challenge.bundle import BundleError, build_bundle
    from fomo_nnunet.models.checkpoints import find_checkpoint

    models = {t.number: getattr(args, t.key) for t in TASKS if t.kind != EMBEDDING and getattr(args, t.key)}
    try:
        embedding = find_checkpoint(args.embedding) if args.embedding else None
        manifest = build_bundle(args.output, models, embedding, args.folds, args.checkpoint)
    except (BundleError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(f"bundle {args.output}: " + ", ".join(f"{k} ({len(v['folds'])} folds)" for k, v in manifest["tasks"].items())
          + (", embedding" if "embedding" in manifest else ""))
    print(f"pretrained checkpoint sha256: {manifest['pretrained_sha256']}")
    return 0
