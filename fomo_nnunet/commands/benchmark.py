"""`fomo-nnunet benchmark`: the whole FOMO-Synth story, end to end, with nnU-Net's own commands."""
from __future__ import annotations

import argparse
import json
import sys

EXAMPLES = """\
examples:
  fomo-nnunet benchmark --preset tiny --work fomo_work        # `make demo`: one seed
  fomo-nnunet benchmark --preset tiny --seeds 3 --work w      # seeds 0, 1, 2: mean, sd, paired differences
  fomo-nnunet benchmark --preset tiny --seed-list 3 4 --work w   # add seeds 3 and 4 to the same folder
  fomo-nnunet benchmark --preset tiny-long --seeds 3 --work w # longer finetuning (hours on 2 CPU cores)
  fomo-nnunet benchmark --preset smoke --tasks 2 3 6 --work /tmp/w   # a few iterations, proves the chain
  fomo-nnunet benchmark --preset full --work /data/fomo_synth  # real sizes (GPU)

Steps: synthesize FOMO-Synth, convert it to nnU-Net datasets, plan and preprocess, pretrain ONE MAE
checkpoint, then per task: plan transfer, preprocess, train the pretrained model and its _scratch
twin with the same budget, predict the out-of-domain test split and score it (tasks 6/7: a linear
probe on frozen embeddings, pretrained vs random-init encoder). Finally the pretrained models are
bundled and the container's entry runs once per task. Writes WORK/report/report.md with the table
and plots. Every finished step leaves a marker in WORK/steps: a rerun skips it (delete a marker to
redo a step).

Repetitions: with --seeds N (seeds 0..N-1) or --seed-list, repetition s pretrains with FOMO_SEED=s
and finetunes both arms with FOMO_SEED=s (the same data order for both arms); results per seed in
WORK/runs/seed<s>. The table gives mean ± sd per arm, the paired difference, wins k/N and a verdict
per task and metric ("better": pretrained wins in every seed and the mean difference exceeds its
sd; "worse": the reverse; else "undecided"; one seed is always undecided). WORK/report/results.json
holds every seed, arm, task, metric and learning check. On a CPU the same seeds give the same
table bit for bit (same -np and nnUNet_n_proc_DA).
"""


def register(sub: argparse._SubParsersAction) -> None:
    from fomo_nnunet.benchmark import PRESETS

    p = sub.add_parser("benchmark", help="synthesize, pretrain, finetune and score all seven tasks (report.md)",
                       description="The FOMO-Synth benchmark: does pretraining pay?", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=list(PRESETS), help="size and budget preset (default: tiny)")
    p.add_argument("--work", default="fomo_work", help="work folder (nnU-Net folders, steps, report); default fomo_work")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=1, metavar="N",
                       help="repetitions with training seeds 0..N-1 (default: 1, seed 0)")
    seeds.add_argument("--seed-list", type=int, nargs="+", default=None, metavar="S",
                       help="repetitions with exactly these training seeds")
    p.add_argument("--data-seed", "--seed", type=int, default=0, dest="data_seed",
                   help="seed of the synthetic data and the probe split, the same for every repetition (default: 0)")
    p.add_argument("--tasks", type=int, nargs="+", default=None, metavar="N", help="only these tasks (default: 1-7)")
    p.add_argument("--n-train", type=int, default=None, help="override the synthetic train cases per task")
    p.add_argument("--n-test", type=int, default=None, help="override the synthetic test cases per task")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default: 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fomo_nnunet.benchmark import Benchmark
    from fomo_nnunet.cli import main as cli_main
    from fomo_nnunet.pipeline import StepFailed

    sizes = None
    if args.n_train or args.n_test:
        from fomo_nnunet.data.synth import PRESETS as SYNTH

        from fomo_nnunet.benchmark import PRESETS as BENCH

        base = SYNTH[BENCH[args.preset].synth_preset]
        sizes = (args.n_train or base.n_train, args.n_test or base.n_test)
    if args.seed_list is None and args.seeds < 1:
        print(f"error: --seeds must be at least 1 (got {args.seeds})", file=sys.stderr)
        return 2
    seeds = tuple(args.seed_list) if args.seed_list is not None else tuple(range(args.seeds))
    bench = Benchmark(args.work, args.preset, args.data_seed, seeds, args.num_processes, tasks=args.tasks,
                      synth_sizes=sizes, in_process=cli_main)
    try:
        report = bench.run()
    except StepFailed as e:
        print(f"error: {e}\n(fix the cause and rerun: finished steps are skipped)", file=sys.stderr)
        return 1
    from fomo_nnunet.report import markdown_table

    rows = json.loads((report.parent / "results.json").read_text())["rows"]
    print("\n" + markdown_table(rows) + f"\n\nreport: {report}")
    return 0
