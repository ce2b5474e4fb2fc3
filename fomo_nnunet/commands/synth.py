"""`fomo-nnunet synth`: write FOMO-Synth, embedded synthetic data in the real FOMO folder layouts."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth", help="write FOMO-Synth: synthetic pretraining corpus and the seven task datasets",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write synthetic brain MRI made from the MNI152 template shipped inside nilearn (no "
                    "download), in the real FOMO layouts:\n"
                    "  OUT/pretrain/PT001_SynthA/sub-01/ses-01/<seq>.nii.gz (+ participants.tsv, mri_info.tsv)\n"
                    "  OUT/finetune/task{N}/{train,test}/preprocessed/sub_i/ses_1/<stem>.nii.gz\n"
                    "  OUT/finetune/task{N}/{train,test}/labels/sub_i/ses_1/{label.txt|seg.nii.gz}\n"
                    "  OUT/previews/*.png, OUT/synth.json\n"
                    "Each task has a few-shot train split and a larger out-of-domain test split from other "
                    "sources (scanners). Output depends on --seed only, not on -np.",
        epilog="presets: tiny = 3 mm, 12 pretraining subjects (3 sources x 4; 31 scans at seed 0), 10/20 cases per task, brain age 100/20 (about a minute); "
               "small = 2 mm, 80 pretraining subjects (5 x 16), 20/60; full = 1 mm, 540 pretraining subjects (12 x 45), 30/200.\n"
               "example: fomo-nnunet synth -o /tmp/fomo_synth --preset tiny -np 2\n"
               "a few dozen 1 mm scans only: fomo-nnunet synth -o /tmp/s --preset full --tasks 3 --n-train 0 "
               "--n-test 0 --pretrain-sources 4 --pretrain-subjects 4")
    p.add_argument("-o", "--output", required=True, help="output folder (created)")
    p.add_argument("--preset", default="tiny", choices=["tiny", "small", "full"], help="size preset (default: tiny)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default: 2)")
    p.add_argument("--tasks", type=int, nargs="+", default=None, metavar="N",
                   help="only these task numbers (default: all seven)")
    p.add_argument("--no-pretrain", action="store_true", help="skip the pretraining corpus")
    p.add_argument("--n-train", type=int, default=None, help="train cases per task, the same for every task (default: the preset's, ten times as many for brain age)")
    p.add_argument("--n-test", type=int, default=None, help="override the preset's test cases per task")
    p.add_argument("--pretrain-sources", type=int, default=None, metavar="N",
                   help="override the preset's number of pretraining sources (scanners)")
    p.add_argument("--pretrain-subjects", type=int, default=None, metavar="N",
                   help="override the preset's pretraining subjects per source (1-2 sessions of 2-4 scans each)")
    p.add_argument("--no-previews", action="store_true", help="skip the preview PNGs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fomo_nnunet.data.synth import generate

    try:
        s = generate(args.output, preset=args.preset, seed=args.seed, num_processes=args.num_processes,
                     tasks=args.tasks, pretrain=not args.no_pretrain, n_train=args.n_train,
                     n_test=args.n_test, previews=not args.no_previews, n_pretrain_sources=args.pretrain_sources,
                     n_pretrain_subjects=args.pretrain_subjects)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    c = s["counts"]
    msg = []
    if "pretrain" in c:
        msg.append(f"pretrain {c['pretrain']['scans']} scans")
    msg += [f"{k} {v['train']['cases']}/{v['test']['cases']}" for k, v in c.items() if k != "pretrain"]
    print(f"FOMO-Synth ({s['preset']}, seed {s['seed']}, {s['spacing_mm']} mm) in {args.output}: "
          + ", ".join(msg) + f" ({s['seconds']} s)")
    return 0
