"""`fomo-nnunet benchmark`: the whole FOMO-Synth story, end to end, with nnU-Net's own commands."""
from __future__ import annotations

import argparse
import json
import sys

EXAMPLES = """\
examples:
  fomo-nnunet benchmark --preset tiny --work fomo_work        # `make demo`: about 22 min on 2 CPU cores
  fomo-nnunet benchmark --preset tiny-long --work fomo_work   # 10x the finetuning steps: about 1.5 h
  fomo-nnunet benchmark --preset smoke --tasks 2 3 6 --work /tmp/w   # a few iterations, proves the chain
  fomo-nnunet benchmark --preset full --work /data/fomo_synth  # real sizes (GPU)

Steps: synthesize FOMO-Synth, convert it to nnU-Net datasets, plan and preprocess, pretrain ONE MAE
checkpoint, then per task: plan transfer, preprocess, train the pretrained model and its _scratch
twin with the same budget, predict the out-of-domain test split and score it (tasks 6/7: a linear
probe on frozen embeddings, pretrained vs random-init encoder). Finally the pretrained models are
bundled and the container's entry runs once per task. Writes WORK/report/report.md with the table
and plots. Every finished step leaves a marker in WORK/steps: a rerun skips it (delete a marker to
redo a step). The data and the probe split are seeded; nnU-Net training is not, so a fresh work
folder gives different numbers (at tiny budgets, differences as large as pretrained vs scratch).
"""


def register(sub: argparse._SubParsersAction) -> None:
    from fomo_nnunet.benchmark import PRESETS

    p = sub.add_parser("benchmark", help="synthesize, pretrain, finetune and score all seven tasks (report.md)",
                       description="The FOMO-Synth benchmark: does pretraining pay?", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=list(PRESETS), help="size and budget preset (default: tiny)")
    p.add_argument("--work", default="fomo_work", help="work folder (nnU-Net folders, steps, report); default fomo_work")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the probe split (default: 0)")
    p.add_argument("--tasks", type=int, nargs="+", default=None, metavar="N", help="only these tasks (default: 1-7)")
    p.add_argument("--n-train", type=int, default=None, help="override the synthetic train cases per task")
    p.add_argument("--n-test", type=int, default=None, help="override the synthetic test cases per task")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default: 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fomo_nnunet.benchmark import Benchmark
    from fomo_nnunet.pipeline import StepFailed

    sizes = None
    if args.n_train or args.n_test:
        from fomo_nnunet.data.synth import PRESETS as SYNTH

        from fomo_nnunet.benchmark import PRESETS as BENCH

        base = SYNTH[BENCH[args.preset].synth_preset]
        sizes = (args.n_train or base.n_train, args.n_test or base.n_test)
    bench = Benchmark(args.work, args.preset, args.seed, args.num_processes, tasks=args.tasks, synth_sizes=sizes)
    try:
        report = bench.run()
    except StepFailed as e:
        print(f"error: {e}\n(fix the cause and rerun: finished steps are skipped)", file=sys.stderr)
        return 1
    from fomo_nnunet.report import markdown_table

    rows = json.loads((report.parent / "results.json").read_text())["rows"]
    print("\n" + markdown_table(rows) + f"\n\nreport: {report}")
    return 0
