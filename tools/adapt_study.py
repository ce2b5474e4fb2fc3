#!/usr/bin/env python3
"""Why does the pretrained arm lose to scratch? One finetuning variant per hypothesis, on a finished
benchmark's data, plans and checkpoints, scored like the benchmark's own arms.

    nice -n 10 .venv/bin/fomo-nnunet benchmark --preset tiny-long --tasks 4 5 --seeds 3 --work W   # the baseline
    nice -n 10 .venv/bin/python tools/adapt_study.py --work W --out W/adaptation-study.md

For every seed whose benchmark arms of a task are finished, each variant of that task (trainers in
trainers/nnUNetTrainerFomoAdaptStudy.py) is trained with that seed's plans and FOMO_SEED, predicts the task's
out-of-domain test split and is scored, through the benchmark's own steps (Benchmark.train_and_score:
resumable, predictions in runs/seed<s>/predictions/<task>/<variant>), as soon as the benchmark has planned and
preprocessed that task for that seed (it may still be training its own arms, which are only read here, never
trained). What the benchmark has not reached yet is left out and named; rerun to fill it in. The table: per
task and arm the main metric's mean ± sd over seeds, the paired difference to the scratch arm of the same
seed, wins and the benchmark's verdict rule.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fomo_nnunet.benchmarks.fomo_synth import Benchmark
from fomo_nnunet.benchmarks.report import MAIN_METRIC, _fmt_mean_sd, table_rows
from fomo_nnunet.tasks import TASKS_BY_NUMBER

# hypothesis -> (what it changes, {task number: trainer}); the benchmark's arms are "pretrained" and "scratch"
VARIANTS = {
    "a_nofreeze": ("(a) no frozen-encoder start (fresh_only_epochs 0)",
                   {4: "nnUNetTrainerFomoSeg_tiny_long_nofreeze", 5: "nnUNetTrainerFomoCls_tiny_long_nofreeze"}),
    "d_decoder": ("(d) MAE decoder loaded too", {4: "nnUNetTrainerFomoSeg_tiny_long_decoder"}),
    "e_avgpool": ("(e) head pools by average only", {5: "nnUNetTrainerFomoCls_tiny_long_avgpool"}),
    "b_enclr01": ("(b) pretrained tensors at 0.1 x the learning rate",
                  {4: "nnUNetTrainerFomoSeg_tiny_long_enclr01", 5: "nnUNetTrainerFomoCls_tiny_long_enclr01"}),
    "c_freshnorm": ("(c) instance-norm affines at their initial values",
                    {4: "nnUNetTrainerFomoSeg_tiny_long_freshnorm", 5: "nnUNetTrainerFomoCls_tiny_long_freshnorm"}),
}


def scored(bench: Benchmark, task, arm: str) -> bool:
    """Has this seed's `arm` of `task` been predicted and scored (its steps finished)?"""
    return bench.pipe.done(bench._s(f"evaluate_{task.key}_{arm}")) is not None


def plans_done(bench: Benchmark, task) -> bool:
    return all(bench.pipe.done(step) for step in (bench._s(f"plan_{task.key}"), f"preprocess_{task.key}"))


def run_study(bench: Benchmark, seeds: list[int], tasks: list[int], variants: list[str], log=print,
              max_new: int | None = None) -> dict:
    """{seed: {task key: {arm: evaluate result}}}: the benchmark's two arms where it has scored them (never
    trained here: the benchmark may be running), and every variant where the benchmark has planned and
    preprocessed the task for that seed. Variant by variant (all seeds of the first before the second), so a
    study cut short has whole variants. `max_new`: stop after training that many variants (a rerun then starts
    again from the first variant, so a seed the benchmark has just planned gets the first variants first)."""
    runs: dict[int, dict[str, dict]] = {}
    new = 0
    for variant in ["pretrained", "scratch", *variants]:
        for seed in seeds:
            bench.use_seed(seed)
            for n in tasks:
                task = TASKS_BY_NUMBER[n]
                base = bench.trainer_for(task)
                trainer = base if variant in ("pretrained", "scratch") else VARIANTS[variant][1].get(n)
                if trainer is None:
                    continue
                plans = bench.scratch_plans if variant == "scratch" else bench.plans
                ready = scored(bench, task, variant) if variant in ("pretrained", "scratch") else \
                    plans_done(bench, task)
                if not ready:
                    log(f"seed {seed}, {task.key}, {variant}: the benchmark has not got that far; left out")
                    continue
                if max_new is not None and new >= max_new and not scored(bench, task, variant):
                    log(f"seed {seed}, {task.key}, {variant}: after --max-new {max_new}; left out")
                    continue
                new += not scored(bench, task, variant)
                runs.setdefault(seed, {}).setdefault(task.key, {})[variant] = \
                    bench.train_and_score(task, variant, trainer, plans)
    return runs


def study_table(runs: dict, tasks: list[int]) -> str:
    """Markdown: per task, one row per arm (mean ± sd over seeds), paired difference to scratch, wins, verdict."""
    lines = []
    for n in tasks:
        key = TASKS_BY_NUMBER[n].key
        seeds = [s for s in sorted(runs) if "scratch" in runs[s].get(key, {})]
        if not seeds:
            continue
        arms = [a for a in dict.fromkeys(a for s in seeds for a in runs[s][key]) if a != "scratch"]
        metric = MAIN_METRIC[n]
        lines += [f"### {key} {TASKS_BY_NUMBER[n].name}: {metric}, seeds {' '.join(map(str, seeds))}", "",
                  "| arm | what changes | mean ± sd | paired difference to scratch | wins | verdict | per seed |",
                  "|---|---|---|---|---|---|---|"]
        for arm in arms:
            paired = {s: {key: {"pretrained": runs[s][key][arm], "scratch": runs[s][key]["scratch"]}}
                      for s in seeds if arm in runs[s][key]}
            row = next(r for r in table_rows(paired) if r["main"])
            what = VARIANTS[arm][0] if arm in VARIANTS else "the benchmark's pretrained arm"
            lines.append(f"| {arm} | {what} | {_fmt_mean_sd(row['pretrained_mean'], row['pretrained_sd'])} | "
                         f"{_fmt_mean_sd(row['difference_mean'], row['difference_sd'])} | {row['wins']}/{row['n']} | "
                         f"{row['verdict']} | {' '.join(f'{v:.3f}' for v in row['pretrained'])} |")
        scratch = next(r for r in table_rows({s: {key: {"pretrained": runs[s][key]["scratch"],
                                                         "scratch": runs[s][key]["scratch"]}} for s in seeds})
                       if r["main"])
        lines.append(f"| scratch | random initialisation | {_fmt_mean_sd(scratch['scratch_mean'], scratch['scratch_sd'])}"
                     f" | | | | {' '.join(f'{v:.3f}' for v in scratch['scratch'])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="the benchmark's work folder (tiny-long, tasks 4 and 5)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tasks", type=int, nargs="+", default=[4, 5])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="in this order (default: all)")
    ap.add_argument("--preset", default="tiny-long")
    ap.add_argument("--max-new", type=int, help="train at most this many variant arms, then write the table")
    ap.add_argument("--out", help="write the tables (Markdown) and runs.json beside it")
    args = ap.parse_args(argv)
    if not (Path(args.work) / "steps").is_dir():
        ap.error(f"--work {args.work}: no benchmark there (no steps/ folder)")
    from fomo_nnunet.cli import main as cli_main

    bench = Benchmark(args.work, args.preset, seeds=tuple(args.seeds), tasks=tuple(args.tasks), in_process=cli_main)
    runs = run_study(bench, args.seeds, args.tasks, args.variants, max_new=args.max_new)
    table = study_table(runs, args.tasks)
    print(table)
    if args.out:
        out = Path(args.out)
        out.write_text(table + "\n")
        out.with_suffix(".json").write_text(json.dumps(runs, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
