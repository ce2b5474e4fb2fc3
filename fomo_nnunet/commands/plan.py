"""`fomo-nnunet plan`: write nnU-Net plans files for pretraining and for transfer to a task."""
from __future__ import annotations

import argparse
import sys

from fomo_nnunet.plans.presets import ARCH_PRESETS, PRETRAIN_PLANS_NAME
from fomo_nnunet.tasks import task_choices
from fomo_nnunet.training.adaptation import ADAPTATIONS, AUTO, DEFAULT_CANDIDATES


def _add_pretrain_parser(psub: argparse._SubParsersAction) -> None:
    """`plan pretrain`: plans for MAE pretraining on a converted corpus."""
    pre = psub.add_parser(
        "pretrain", help="plans for MAE pretraining on a converted corpus (fomoPretrainPlans.json)",
        description="Write fomoPretrainPlans.json into $nnUNet_preprocessed/DatasetNNN_*: a fixed "
                    "foundation-model architecture (--arch), patch and spacing, z-score per scan. nnU-Net's "
                    "fingerprint is extracted first when missing. Next: nnUNetv2_preprocess -d ID "
                    "-plans_name fomoPretrainPlans -c 3d_fullres")
    pre.add_argument("-d", "--dataset", type=int, required=True, help="dataset ID of the converted corpus")
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
    pre.add_argument("--verify_dataset_integrity", action="store_true",
                     help="check the raw dataset first, as nnUNetv2_plan_and_preprocess does with this flag")
    pre.set_defaults(func=run_pretrain)


def _add_transfer_parser(psub: argparse._SubParsersAction) -> None:
    """`plan transfer`: plans for a task dataset, derived from a pretrained checkpoint."""
    tr = psub.add_parser(
        "transfer", help="plans for a task dataset, derived from a pretrained checkpoint (fomoPlans.json)",
        description="Write fomoPlans.json for a converted task dataset: network, spacing and normalisation from "
                    "the pretraining checkpoint's metadata (so every pretrained weight has a place to go), input "
                    "channels and classes from the task. Patch: the pretraining patch, cropped to the task's median "
                    "image when smaller (segmentation), or covering the median brain (classification, regression). "
                    "The plans record the checkpoint (path and sha256); nnUNetTrainerFomo* trainers load it. "
                    "Next: nnUNetv2_preprocess -d ID -plans_name fomoPlans -c 3d_fullres")
    tr.add_argument("-d", "--dataset", type=int, required=True, help="dataset ID of the converted task")
    tr.add_argument("--pretrained", default=None,
                    help="pretraining checkpoint (.pth, taken as it is) or its results folder, which must hold a "
                         "finished pretraining (fold_*/checkpoint_final.pth); the plans record the file's sha256 "
                         "and the finetuning trainers refuse a file that changed since")
    tr.add_argument("--from-scratch", action="store_true",
                    help="the same plans without a link to the checkpoint (network from --pretrained's metadata, "
                         "or from --arch when there is no checkpoint), for honest from-scratch comparisons")
    tr.add_argument("--arch", default=None, choices=list(ARCH_PRESETS),
                    help="with --from-scratch and no --pretrained: the architecture preset")
    tr.add_argument("--task", default=None, choices=task_choices(),
                    help="the FOMO task (default: read from dataset.json 'fomo_task' or the dataset name)")
    tr.add_argument("--patch", type=int, default=None, help="cubic patch edge in voxels (default: see above)")
    tr.add_argument("--batch-size", type=int, default=None, help="batch size (default: the pretraining batch size)")
    tr.add_argument("--plans-name", default="fomoPlans", help="plans identifier (default: fomoPlans)")
    tr.add_argument("--data-identifier", default=None,
                    help="folder name of the preprocessed data (default: PLANS_NAME_3d_fullres); plans that differ "
                         "only in their checkpoint, e.g. one per pretraining seed, can share one preprocessing, as "
                         "nnU-Net's ResEnc planners do")
    tr.add_argument("-np", "--num-processes", type=int, default=2,
                    help="processes for nnU-Net's fingerprint extraction (default: 2)")
    tr.add_argument("--verify_dataset_integrity", action="store_true",
                    help="check the raw dataset first, as nnUNetv2_plan_and_preprocess does with this flag")
    ad = tr.add_argument_group(
        "adaptation", "how the finetuning trainers use the pretrained weights, recorded in the plans: "
        + "; ".join(f"{a.name}: {a.description}" + (f" ({'/'.join(a.kinds)} only)" if a.kinds else "")
                    for a in ADAPTATIONS.values())
        + ". auto: choose among --adapt-candidates by cross-validation of --adapt-trainer on the training cases "
          "(the plans' data is preprocessed first; each candidate trains under plans PLANS__adapt_NAME on "
          "--adapt-folds of nnU-Net's 5-fold split; the best pooled validation Dice / AUROC / MAE wins, ties go to "
          "the earlier candidate); the choice and every candidate's scores are written into the plans. Without "
          "--adapt the trainer's recipe is used as it is")
    ad.add_argument("--adapt", default=None, metavar="NAME", choices=[*ADAPTATIONS, AUTO],
                    help=f"{', '.join(ADAPTATIONS)} or {AUTO}")
    ad.add_argument("--adapt-trainer", default=None, metavar="TRAINER",
                    help="with --adapt auto: the trainer to cross-validate, with the budget you will train with "
                         "(default: nnUNetTrainerFomoSeg / Cls / Reg for the task's kind)")
    ad.add_argument("--adapt-candidates", nargs="+", default=list(DEFAULT_CANDIDATES), metavar="NAME",
                    help=f"with --adapt auto: the candidates, in order of preference on ties (default: "
                         f"{' '.join(DEFAULT_CANDIDATES)}; those that give the trainer the same recipe as an earlier "
                         f"one, or do not apply to the task, are skipped)")
    ad.add_argument("--adapt-folds", nargs="+", type=int, default=list(range(5)), metavar="FOLD",
                    help="with --adapt auto: folds of nnU-Net's split to train per candidate (default: 0 1 2 3 4)")
    ad.add_argument("-device", default=None, choices=["cpu", "cuda", "mps"],
                    help="with --adapt auto: the device of the trainings (default: cuda when available, else cpu)")
    tr.set_defaults(func=run_transfer)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="write fomoPretrainPlans / fomoPlans plans files",
                       description="Write nnU-Net plans files. Then run nnUNetv2_preprocess with -plans_name.")
    psub = p.add_subparsers(dest="plan_command", metavar="WHAT")
    _add_pretrain_parser(psub)
    _add_transfer_parser(psub)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def _refused(e: Exception) -> int:
    """A mistake of the user's: one line on stderr, exit code BAD_INPUT."""
    from fomo_nnunet.exit_codes import BAD_INPUT

    print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
    return BAD_INPUT


def run_pretrain(args: argparse.Namespace) -> int:
    from fomo_nnunet.paths import dataset_name, require_env

    require_env("nnUNet_raw"), require_env("nnUNet_preprocessed")
    from fomo_nnunet.plans.pretrain_planner import plan_pretrain

    try:
        dataset_name(args.dataset)
        plans = plan_pretrain(args.dataset, args.arch, args.patch, args.spacing, args.batch_size,
                              args.plans_name, args.num_processes, args.verify_dataset_integrity)
    except ValueError as e:
        return _refused(e)
    c = plans["configurations"]["3d_fullres"]
    print(f"{args.plans_name}: {args.arch}, patch {c['patch_size']}, spacing {c['spacing']}, "
          f"batch {c['batch_size']}")
    print(f"next: nnUNetv2_preprocess -d {args.dataset} -plans_name {args.plans_name} -c 3d_fullres")
    return 0


def run_transfer(args: argparse.Namespace) -> int:
    from fomo_nnunet.paths import dataset_name, require_env

    require_env("nnUNet_raw"), require_env("nnUNet_preprocessed")
    from fomo_nnunet.plans.transfer_planner import plan_transfer

    if args.adapt and args.from_scratch:
        return _refused(ValueError("--adapt chooses how pretrained weights are used; --from-scratch plans have none"))
    if args.adapt != AUTO and (args.adapt_trainer or args.device):
        return _refused(ValueError("--adapt-trainer and -device are for --adapt auto"))
    try:
        dataset_name(args.dataset)
        plans = plan_transfer(args.dataset, args.pretrained, args.from_scratch, args.arch, args.task, args.patch,
                              args.batch_size, args.plans_name, args.num_processes, args.verify_dataset_integrity,
                              args.data_identifier)
    except (ValueError, FileNotFoundError, KeyError) as e:
        return _refused(e)
    c = plans["configurations"]["3d_fullres"]
    link = plans["fomo"]["pretrained_checkpoint"] or "none (from scratch)"
    print(f"{args.plans_name}: {plans['fomo']['task']} ({plans['fomo']['task_kind']}), patch {c['patch_size']}, "
          f"spacing {c['spacing']}, batch {c['batch_size']}, pretrained checkpoint: {link}")
    if args.adapt:
        rc = _adapt(args, plans["fomo"]["task_kind"])
        if rc:
            return rc
    print(f"next: nnUNetv2_preprocess -d {args.dataset} -plans_name {args.plans_name} -c 3d_fullres")
    return 0


def _adapt(args: argparse.Namespace, kind: str) -> int:
    """Record --adapt NAME, or choose one by cross-validation (--adapt auto), in the plans just written."""
    from fomo_nnunet.plans import adapt_planner

    try:
        if args.adapt != AUTO:
            entry = adapt_planner.record_adaptation(args.dataset, args.plans_name, args.adapt)
        else:
            from fomo_nnunet.trainer_checks import TRAINER_FOR_KIND

            device = args.device or _default_device()
            entry = adapt_planner.choose_adaptation(args.dataset, args.plans_name,
                                                    args.adapt_trainer or TRAINER_FOR_KIND[kind],
                                                    args.adapt_candidates, args.adapt_folds, device,
                                                    args.num_processes)
    except (ValueError, FileNotFoundError) as e:
        return _refused(e)
    except RuntimeError as e:  # a candidate's training failed
        from fomo_nnunet.exit_codes import FAILED

        print(f"error: {e}", file=sys.stderr)
        return FAILED
    print(f"adaptation: {entry['name']} ({entry['description']}), chosen by {adapt_planner.choice_words(entry)}")
    for name, score in ((entry.get("evidence") or {}).get("candidates") or {}).items():
        print(f"  {name}: {score['metric']} {score['value']} (folds {score['per_fold']})")
    return 0


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
