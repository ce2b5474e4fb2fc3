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
  fomo-nnunet benchmark --preset tiny-long --seeds 3 --work w2 --pretrain-trainer nnUNetTrainerFomoMAE_tiny_noskip_vicreg_sessions
                                                           # another pretraining recipe, the same finetuning
  fomo-nnunet benchmark --preset smoke --tasks 2 3 6 --work /tmp/w   # a few iterations, proves the chain
  fomo-nnunet benchmark --preset full --work /data/fomo_synth  # real sizes (GPU)

Steps: synthesize FOMO-Synth, convert it to nnU-Net datasets, plan and preprocess, pretrain ONE MAE
checkpoint, then per task: plan transfer, preprocess, train the pretrained model and the same trainer
on from-scratch plans (`plan transfer --from-scratch`) with the same budget, predict the out-of-domain test split and score it (tasks 6/7: a linear
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
    from fomo_nnunet.benchmarks.fomo_synth import PRESETS
    from fomo_nnunet.training.adaptation import ADAPTATIONS, AUTO

    p = sub.add_parser("benchmark", help="synthesize, pretrain, finetune and score all seven tasks (report.md)",
                       description="The FOMO-Synth benchmark: does pretraining pay?", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       # argparse checks every option of the command line against this parser's prefixes, the
                       # subcommand's too: `features --pretrain` would be an ambiguous --pretrain-* here
                       allow_abbrev=False)
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
    p.add_argument("--n-train", type=int, default=None,
                   help="synthetic train cases, the same for every task (default: the preset's; brain age 10x)")
    p.add_argument("--n-test", type=int, default=None, help="override the synthetic test cases per task")
    add_corpus_options(p)
    p.add_argument("--pretrain-trainer", default=None, metavar="TRAINER",
                   help="pretrain with this MAE trainer instead of the preset's (e.g. "
                        "nnUNetTrainerFomoMAE_tiny_noskip_vicreg_sessions); finetuning keeps the preset's "
                        "trainers. A work folder keeps the pretraining trainer it started with")
    p.add_argument("--adapt", default=None, metavar="NAME", choices=[*ADAPTATIONS, AUTO],
                   help=f"the pretrained arm's plans get `plan transfer --adapt NAME` ({', '.join(ADAPTATIONS)} or "
                        f"{AUTO}: chosen per task and seed by cross-validation of the preset's trainer on the "
                        f"training cases, shown in the report); default: the trainers' recipes as they are. A work "
                        f"folder keeps the --adapt it finetuned with")
    p.add_argument("--adapt-folds", type=int, nargs="+", default=[0, 1, 2, 3, 4], metavar="FOLD",
                   help="with --adapt auto: folds of nnU-Net's split per candidate (default: 0 1 2 3 4)")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default: 2)")
    p.set_defaults(func=run)
    sub_bench = p.add_subparsers(dest="benchmark_command", metavar="SUBCOMMAND",
                                 title="subcommands (without one: the whole benchmark)")
    register_features(sub_bench)


def add_corpus_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus-sources", type=int, default=None, metavar="N",
                   help="pretraining corpus: this many sources (scanners) instead of the preset's (tiny: 3)")
    p.add_argument("--corpus-subjects", type=int, default=None, metavar="N",
                   help="pretraining corpus: subjects per source (tiny: 4; each 1-2 sessions of 2 scans)")
    p.add_argument("--pretrain-batch-size", type=int, default=None, metavar="N",
                   help="pretraining batch size (`plan pretrain --batch-size N`) instead of the architecture "
                        "preset's (tiny: 2). Joint-embedding terms need it: at N samples per branch VICReg's "
                        "variance hinge cannot fall below vicreg_hinge_floor(D, N). A work folder keeps the "
                        "batch it planned. Finetuning (both arms) keeps the preset's batch")


FEATURES_EXAMPLES = """\
examples:
  fomo-nnunet benchmark features --work fomo_work          # every pretraining checkpoint in the folder
  fomo-nnunet benchmark features --work w --pretrain nnUNetTrainerFomoMAE_tiny nnUNetTrainerFomoMAE_tiny_noskip --seeds 3
                                                           # pretrain what is missing (resumable), then probe
  fomo-nnunet benchmark features --work w --checkpoint my_mae.pth   # another checkpoint, same probe sets
  fomo-nnunet benchmark features --work w --pooling stages   # every encoder stage pooled, for comparison

For every image-level task (classification, regression, embedding: tasks 1, 3, 5, 6, 7) the command
synthesises larger probe sets once (default 100 train + 100 out-of-domain test cases per task, in
WORK/features/data), embeds them with each checkpoint exactly as the container writes embeddings
(a multi-channel case: its channels' vectors side by side), fits a linear probe on the train split
(classification: the organisers' fomo-lp SGD heads in 5-fold cross-validation; regression: ridge with
a cross-validated penalty; both on the raw embeddings) and scores the test split with a bootstrap
95 % interval. The same architecture with random weights (3 init seeds) is the baseline. It also
reports dead embedding dimensions and the effective rank (RankMe). Results per encoder are kept in
WORK/features/results (a rerun only computes new checkpoints); the summary is
WORK/features/features.json and features.md.

Each checkpoint is embedded with its own pooling (fomo_metadata "embedding_pooling", "deepest" when
absent) unless --pooling deepest|stages probes every encoder, pretrained and random-init, with that one;
a checkpoint whose statistics were computed for another pooling then gets fresh ones over the corpus its
twins use, so both arms are scaled alike. Per-encoder results are kept per pooling (a run with another
pooling never reuses them); features.json/md are the latest run's and name its pooling.
"""


def register_features(sub: argparse._SubParsersAction) -> None:
    from fomo_nnunet.models.embedding_pooling import POOLINGS
    from fomo_nnunet.benchmarks.features import INIT_SEEDS, N_TEST, N_TRAIN

    p = sub.add_parser("features", help="probe frozen embeddings of pretraining checkpoints against random init",
                       description="The feature benchmark: linear probes on frozen embeddings, pretrained vs "
                                   "random-init encoders, minutes per checkpoint on a CPU.",
                       epilog=FEATURES_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="fomo_work", help="a benchmark work folder (default: fomo_work)")
    p.add_argument("--checkpoint", nargs="+", default=None, metavar="PTH",
                   help="probe these checkpoints (files or results folders) instead of the work folder's")
    p.add_argument("--pretrain", nargs="+", default=None, metavar="TRAINER",
                   help="first pretrain these trainers in the work folder (missing seeds only; resumable)")
    p.add_argument("--preset", default="tiny", help="benchmark preset for --pretrain (default: tiny)")
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="pretraining seeds 0..N-1 for --pretrain")
    add_corpus_options(p)
    p.add_argument("--arms", nargs="+", default=None, metavar="TRAINER",
                   help="only these pretraining trainers (default: every one found)")
    p.add_argument("--pretrained-arm", default=None, metavar="TRAINER",
                   help="the arm features.json reports as 'pretrained' (default: the preset's pretraining "
                        "trainer if present, else the first arm)")
    p.add_argument("--tasks", type=int, nargs="+", default=None, metavar="N",
                   help="only these image-level tasks (default: 1 3 5 6 7)")
    p.add_argument("--n-train", type=int, default=N_TRAIN, help=f"probe train cases per task (default {N_TRAIN})")
    p.add_argument("--n-test", type=int, default=N_TEST, help=f"probe test cases per task (default {N_TEST})")
    p.add_argument("--init-seeds", type=int, default=len(INIT_SEEDS), metavar="N",
                   help=f"random-init twins (default {len(INIT_SEEDS)})")
    p.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="probe every encoder with this embedding pooling: deepest (the deepest stage's global "
                        "average) or stages (every stage's, concatenated shallow to deep) (default: each "
                        "checkpoint's own)")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes for synthesis (default: 2)")
    p.set_defaults(func=run_features)


def run_features(args: argparse.Namespace) -> int:
    from fomo_nnunet.benchmarks.fomo_synth import PRESETS
    from fomo_nnunet.benchmarks.features import FOLDS, FeatureBenchmark, work_checkpoints

    # refused before minutes of pretraining or synthesis: each probe is chosen by FOLDS-fold cross-validation
    for flag, size, least in (("--n-train", args.n_train, FOLDS), ("--n-test", args.n_test, FOLDS),
                              ("--seeds", args.seeds, 1), ("--init-seeds", args.init_seeds, 1),
                              ("--pretrain-batch-size", args.pretrain_batch_size, 1)):
        if size is not None and size < least:
            print(f"error: {flag} must be at least {least} (got {size})", file=sys.stderr)
            return 2
    if args.pretrain:
        from fomo_nnunet.benchmarks.fomo_synth import Benchmark
        from fomo_nnunet.cli import main as cli_main
        from fomo_nnunet.benchmarks.pipeline import StepFailed

        bench = Benchmark(args.work, args.preset, seeds=tuple(range(args.seeds)), num_processes=args.num_processes,
                          in_process=cli_main, corpus=(args.corpus_sources, args.corpus_subjects),
                          pretrain_batch_size=args.pretrain_batch_size)
        try:
            bench.pretrain_variants(tuple(args.pretrain))
        except StepFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    elif args.pretrain_batch_size is not None:
        print("error: --pretrain-batch-size applies to the pretraining that --pretrain runs; without --pretrain "
              "the checkpoints are probed as they are", file=sys.stderr)
        return 2
    if args.checkpoint:
        found = {"checkpoint": dict(enumerate(args.checkpoint))}
    else:
        found = work_checkpoints(args.work)
        if args.arms:
            found = {a: found[a] for a in args.arms if a in found}
    if not found:
        print(f"error: no finished pretraining checkpoint in {args.work}/runs/seed*/nnUNet_results "
              f"(run `fomo-nnunet benchmark` or add --pretrain TRAINER), and no --checkpoint", file=sys.stderr)
        return 2
    preset_trainer = PRESETS[args.preset].pretrain_trainer if args.preset in PRESETS else None
    default = args.pretrained_arm or (preset_trainer if preset_trainer in found else next(iter(found)))
    if default not in found:
        print(f"error: --pretrained-arm {default}: no checkpoint of it (found: {', '.join(found)})", file=sys.stderr)
        return 2
    from pathlib import Path

    from fomo_nnunet.benchmarks.features import feature_tasks

    tasks = feature_tasks()
    if args.tasks:
        unknown = sorted(set(args.tasks) - {t.number for t in tasks})
        if unknown:
            print(f"error: --tasks {' '.join(map(str, unknown))}: not image-level tasks (choose from "
                  f"{' '.join(str(t.number) for t in tasks)})", file=sys.stderr)
            return 2
        tasks = tuple(t for t in tasks if t.number in args.tasks)
    bench = FeatureBenchmark(Path(args.work), found, default, tasks=tasks, n_train=args.n_train, n_test=args.n_test,
                             init_seeds=tuple(range(args.init_seeds)), num_processes=args.num_processes,
                             pooling=args.pooling)
    try:
        bench.run()
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((bench.folder / "features.md").read_text())
    print(f"written: {bench.folder / 'features.json'}, {bench.folder / 'features.md'}")
    return 0


def run(args: argparse.Namespace) -> int:
    from fomo_nnunet.benchmarks.fomo_synth import Benchmark
    from fomo_nnunet.cli import main as cli_main
    from fomo_nnunet.benchmarks.pipeline import StepFailed

    if args.seed_list is None and args.seeds < 1:
        print(f"error: --seeds must be at least 1 (got {args.seeds})", file=sys.stderr)
        return 2
    for flag, size in (("--n-train", args.n_train), ("--n-test", args.n_test),
                       ("--pretrain-batch-size", args.pretrain_batch_size)):
        if size is not None and size < 1:  # every task needs cases to finetune on and to score
            print(f"error: {flag} must be at least 1 (got {size})", file=sys.stderr)
            return 2
    sizes = (args.n_train, args.n_test) if args.n_train is not None or args.n_test is not None else None
    if args.pretrain_trainer is not None:
        problem = pretraining_trainer_problem(args.pretrain_trainer)
        if problem:
            print(f"error: --pretrain-trainer {args.pretrain_trainer}: {problem}", file=sys.stderr)
            return 2
    seeds = tuple(args.seed_list) if args.seed_list is not None else tuple(range(args.seeds))
    bench = Benchmark(args.work, args.preset, args.data_seed, seeds, args.num_processes, tasks=args.tasks,
                      synth_sizes=sizes, in_process=cli_main, corpus=(args.corpus_sources, args.corpus_subjects),
                      pretrain_trainer=args.pretrain_trainer, adapt=args.adapt, adapt_folds=tuple(args.adapt_folds),
                      pretrain_batch_size=args.pretrain_batch_size)
    try:
        bench.claim_pretraining()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        report = bench.run()
    except StepFailed as e:
        print(f"error: {e}\n(fix the cause and rerun: finished steps are skipped)", file=sys.stderr)
        return 1
    from fomo_nnunet.benchmarks.report import markdown_table

    rows = json.loads((report.parent / "results.json").read_text())["rows"]
    print("\n" + markdown_table(rows) + f"\n\nreport: {report}")
    return 0


def pretraining_trainer_problem(name: str) -> str | None:
    """Why `name` cannot pretrain in the benchmark (None: it can)."""
    from fomo_nnunet.models.network_record import trainer_class

    try:
        cls = trainer_class(name)
    except RuntimeError:  # nnU-Net's search found nothing
        cls = None
    if cls is None:
        return "no such trainer (not in fomo_nnunet's trainers nor nnU-Net's)"
    from fomo_nnunet.ssl.recipe import PretrainRecipe

    if not isinstance(getattr(cls, "recipe", None), PretrainRecipe):
        return "not a pretraining trainer (its recipe is not a PretrainRecipe)"
    return None
