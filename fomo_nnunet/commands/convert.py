"""`fomo-nnunet convert`: FOMO folders -> nnU-Net raw datasets (pretraining corpus, task folders)."""
from __future__ import annotations

import argparse
import sys

from fomo_nnunet.tasks import PRETRAIN_DATASET_ID, PRETRAIN_DATASET_NAME, TASKS, task_choices

_COMMON = """
Checks every source file, its header before any voxel is read; unusable ones (unreadable, truncated,
not gzip behind .nii.gz, 2D, an axis of size 0 or fewer than 15 slices, complex or RGB data, a header
claiming more voxels than {max_voxels:,} or than the file can hold, a degenerate or sheared affine,
all NaN/Inf, all zero, broken links or link loops), folders that cannot be listed and a .nii beside
the .nii.gz of the same scan are skipped and listed with their reason in conversion_report.json. A
real 4D series keeps its first volume (noted); NaN/Inf and values beyond +-{max_abs:g} become 0
(noted). Copied images (every task image; pretraining scans with --copy or a fixed copy) are
float32 in RAS orientation with their own spacing, every file written with the
mode the umask gives. Reruns skip finished cases, remove the temporary files of interrupted runs,
convert again the cases whose source files changed (size or time) or lost a file (then skipped with
the reason), and remove the cases whose source is gone (listed under "removed" in the report);
nothing is ever half-written: SIGINT/SIGTERM stop the workers within {grace:g} s (a worker that has
not removed its temporary files by then is killed and its files removed for it), and a worker whose
parent died (kill -9) stops by itself. --shard i/n converts the cases with index % n == i (for
job arrays); every run rebuilds the dataset-level JSON files from the per-case records in
.fomo_records/, so shards and reruns give the same result.
Needs $nnUNet_raw (see `fomo-nnunet env`).

{exit_table}"""


def _common_help() -> str:
    from fomo_nnunet import exit_codes
    from fomo_nnunet.io import nifti_checks
    from fomo_nnunet.data.workers import STOP_GRACE_SECONDS

    return _COMMON.format(max_voxels=nifti_checks.MAX_VOXELS, max_abs=nifti_checks.MAX_ABS_INTENSITY,
                          exit_table=exit_codes.TABLE, grace=STOP_GRACE_SECONDS)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default=None,
                   help="dataset name after DatasetNNN_ (letters, digits, _ and -; default: see above)")
    p.add_argument("-np", "--num-processes", type=int, default=1,
                   help="worker processes (default: 1)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="convert only cases with index %% N == I, e.g. 0/4 (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_pretrain_parser(csub: argparse._SubParsersAction, common: str) -> None:
    """`convert pretrain`: a pretraining corpus -> one single-channel case per scan."""
    pre = csub.add_parser(
        "pretrain", help="a FOMO60K/FOMO300K corpus -> one single-channel case per scan",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"""Convert a pretraining corpus: every scan becomes one case (channel "MRI") with its brain
(non-zero) mask as labelsTr/<case>.nii.gz. By default the scans stay where they are: dataset.json's
"dataset" entry lists each case's scan by its absolute path (nnU-Net reads it there), and only the
masks are written. A scan that cannot be read as it is (4D, NaN/Inf or extreme values, not RAS,
qform and sform that disagree, '$' in its path) gets a fixed copy in imagesTr, named with the reason
under "fixed_copies" in conversion_report.json. --copy writes every scan to imagesTr/<case>_0000.nii.gz
(float32, RAS), as earlier versions did. A referenced scan that is changed, moved or deleted later
makes `fomo-nnunet preprocess` stop with the list of missing files; a rerun of this command converts
changed scans again and removes vanished ones. subjects.json links the scans of one session
(source/subject/session -> {{case: sequence}}) and carries participants.tsv (and mri_info.tsv)
metadata where present.

Layouts (detected, or --layout):
  fomo60k   SRC/sub_1/ses_1/t1.nii.gz, repeats t1_2.nii.gz
  fomo300k  SRC/PT001_<Source>/sub-01/ses-01/t1w.nii.gz, SRC/participants.tsv
{common}

examples:
  fomo-nnunet convert pretrain /data/FOMO300K                 # -> {PRETRAIN_DATASET_NAME}
  fomo-nnunet convert pretrain /data/FOMO60K -d 901 --name FOMO60K -np 8
  fomo-nnunet convert pretrain /data/FOMO300K -np 16 --shard $SLURM_ARRAY_TASK_ID/32
next: fomo-nnunet plan pretrain -d {PRETRAIN_DATASET_ID}, then fomo-nnunet preprocess""")
    pre.add_argument("src", help="the corpus folder")
    pre.add_argument("-d", "--dataset", type=int, default=PRETRAIN_DATASET_ID,
                     help=f"dataset ID (default: {PRETRAIN_DATASET_ID})")
    pre.add_argument("--layout", choices=("auto", "fomo60k", "fomo300k"), default="auto",
                     help="folder layout (default: auto)")
    pre.add_argument("--copy", action="store_true",
                     help="copy every scan into imagesTr (float32, RAS) instead of referencing it where it is")
    _add_common(pre)
    pre.set_defaults(func=run_pretrain)


def _add_task_parser(csub: argparse._SubParsersAction, common: str) -> None:
    """`convert task`: a FOMO task folder -> a multi-channel dataset with labels or targets."""
    table = "\n".join(f"  {t.key:6s} {t.name:15s} {t.kind:15s} {', '.join(t.channel_names):28s} -> "
                      f"{t.dataset_name}" for t in TASKS)
    tk = csub.add_parser(
        "task", help="a FOMO task folder -> a multi-channel dataset with labels/targets",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"""Convert a FOMO task folder (FOMO25 layout): SRC/preprocessed/sub_X/ses_1/<seq>.nii.gz with
SRC/labels/sub_X/ses_1/{{seg.nii.gz|label.txt}}, or the same under SRC/train/ and SRC/test/ (each
with an optional participants.tsv). One channel per task input, in the order below (t2s or swi fill
one channel; tasks 6/7 take whichever single sequence exists); channels on another grid than the
first are resampled onto it. Segmentation tasks: labelsTr = seg.nii.gz (values checked). Other
tasks: labelsTr = brain mask of the first channel, label.txt values in targets.json (train) and
targetsTs.json (test). The test split goes to imagesTs/labelsTs. attributes.json holds sex/age/
source/split from participants.tsv; subjects.json the source files of every case.

tasks (channel order, default dataset):
{table}
{common}

examples:
  fomo-nnunet convert task task2 /data/fomo26/task2           # -> Dataset902_FOMO2Meningioma
  fomo-nnunet convert task brainage /data/fomo26/task3 -d 913 --name BrainAgeV2 -np 4
next: fomo-nnunet plan transfer -d ID --pretrained RESULTS""")
    tk.add_argument("task", choices=task_choices(), metavar="TASK",
                    help="task1..task7 or a task name (" + ", ".join(t.name for t in TASKS) + ")")
    tk.add_argument("src", help="the task folder")
    tk.add_argument("-d", "--dataset", type=int, default=None,
                    help="dataset ID (default: 900 + task number)")
    _add_common(tk)
    tk.set_defaults(func=run_task)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert FOMO folders into nnU-Net raw datasets",
                       description="Convert FOMO folders (pretraining corpora, task folders) into nnU-Net raw "
                                   "datasets under $nnUNet_raw.")
    csub = p.add_subparsers(dest="convert_command", metavar="WHAT")
    common = _common_help()
    _add_pretrain_parser(csub, common)
    _add_task_parser(csub, common)
    p.set_defaults(func=lambda a: p.print_help() or 2)  # exit_codes.BAD_INPUT


def _print_summary(result, what: str) -> None:
    r = result.report
    print(f"{what} -> {result.folder}")
    print(f"  this run: {result.converted} converted, {len(result.skipped)} skipped, "
          f"{result.already_done} already done (of {result.in_shard} in this shard, {result.total} in total)")
    print(f"  dataset: {r.get('converted', 0)} cases, {len(r.get('skipped', []))} skipped items "
          f"(see {result.folder / 'conversion_report.json'})")
    if result.leftovers:
        print(f"  removed {len(result.leftovers)} temporary files of interrupted runs")
    if result.redone:
        print(f"  {len(result.redone)} cases had changed or vanished source files since they were converted (or "
              f"were stored the other way, --copy or not): converted again or skipped (see the report): "
              f"{', '.join(result.redone[:10])}"
              + (" ..." if len(result.redone) > 10 else ""))
    fixed = r.get("fixed_copies") or {}
    if fixed:
        print(f"  {len(fixed)} scans could not be referenced as they are and were copied (fixed_copies in the report)")
    if result.removed:
        print(f"  removed {len(result.removed)} cases whose source is gone: {', '.join(result.removed[:10])}"
              + (" ..." if len(result.removed) > 10 else ""))
    skipped = result.listing + result.skipped
    for s in skipped[:20]:
        print(f"  skipped {s['path']}: {s['reason']}")
    if len(skipped) > 20:
        print(f"  ... and {len(skipped) - 20} more")


def _convert(fn, *args, **kwargs):
    """Run a converter; a bad argument or source is one line on stderr and exit code 2 (BAD_INPUT)."""
    from fomo_nnunet.paths import require_env

    try:
        require_env("nnUNet_raw")
        return fn(*args, **kwargs)
    except SystemExit as e:  # require_env's message
        print(e, file=sys.stderr)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
    return None


def _nothing_converted(result) -> bool:
    """True when the dataset holds no case after this run (none converted now or before)."""
    return result.report.get("converted", 0) == 0


def _nothing_converted_task(task, src: str) -> str:
    """The line for a task folder of which no case could be converted: which task it looks like, if any."""
    from fomo_nnunet.data.task_guess import guess_task

    looks = guess_task(src)
    said = f"nothing converted: no case of {src} has the inputs and label of {task.key} ({task.name})"
    if looks is None:
        return f"{said}, nor of any other task (reasons above)"
    if looks is task:
        return f"{said} (reasons above)"
    return (f"{said}; the folder looks like {looks.key} ({looks.name}): "
            f"fomo-nnunet convert task {looks.key} {src}")


def run_pretrain(args: argparse.Namespace) -> int:
    from fomo_nnunet import exit_codes
    from fomo_nnunet.data.convert import convert_pretrain

    if args.num_processes < 1:
        print(f"error: -np must be at least 1, got {args.num_processes}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    res = _convert(convert_pretrain, args.src, args.dataset, args.name,
                   None if args.layout == "auto" else args.layout, args.num_processes, args.shard,
                   progress=not args.no_progress, copy=args.copy)
    if res is None:
        return exit_codes.BAD_INPUT
    _print_summary(res, f"pretraining corpus {args.src}")
    if _nothing_converted(res):
        print(f"error: nothing converted: no scan of {args.src} could be used (reasons above and in "
              f"{res.folder / 'conversion_report.json'})", file=sys.stderr)
        return exit_codes.BAD_INPUT
    print(f"next: fomo-nnunet plan pretrain -d {args.dataset}")
    return 0


def run_task(args: argparse.Namespace) -> int:
    from fomo_nnunet import exit_codes
    from fomo_nnunet.data.convert import convert_task
    from fomo_nnunet.tasks import get_task

    task = get_task(args.task)
    if args.num_processes < 1:
        print(f"error: -np must be at least 1, got {args.num_processes}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    res = _convert(convert_task, task, args.src, args.dataset, args.name, args.num_processes, args.shard,
                   progress=not args.no_progress)
    if res is None:
        return exit_codes.BAD_INPUT
    _print_summary(res, f"{task.key} ({task.name}) {args.src}")
    if _nothing_converted(res):
        print(f"error: {_nothing_converted_task(task, args.src)}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    did = args.dataset if args.dataset is not None else task.default_dataset_id
    print(f"next: fomo-nnunet plan transfer -d {did} --pretrained RESULTS")
    return 0
