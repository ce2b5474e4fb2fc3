"""`generate`: the whole FOMO-Synth corpus under one folder.

Plans every job (one pretraining subject or one task case each), runs them in a worker pool,
then writes the tables that list them (participants.tsv, mri_info.tsv), OUT/synth.json (settings,
sources, counts) and the previews. Every job draws from its own generator (seeded from the seed
and the job's place), so the output does not depend on the number of processes.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from fomo_nnunet.tasks import CLASSIFICATION, EMBEDDING, TASKS, TASKS_BY_NUMBER

from .cases import plan_task_cases
from .layouts import MRI_INFO_COLUMNS, PARTICIPANT_COLUMNS, TASK_PARTICIPANT_COLUMNS, run_job, write_text, \
    write_tsv
from .presets import SPLITS, SynthPreset, resolve_preset
from .previews import make_previews
from .sources import pretrain_sources, task_sources
from .template import atlas_resolution, get_atlas

ALL_TASKS = tuple(t.number for t in TASKS)


def _resolve_tasks(tasks) -> tuple[int, ...]:
    tasks = tuple(sorted(set(tasks))) if tasks else ALL_TASKS
    for t in tasks:
        if t not in TASKS_BY_NUMBER:
            raise ValueError(f"unknown task {t}")
    return tasks


def _plan_jobs(p: SynthPreset, preset: str, seed: int, out: Path, tasks: tuple[int, ...],
               pretrain: bool) -> list[dict]:
    """Pretraining subjects first (the big jobs, for load balance), then every task case."""
    common = {"preset": preset, "seed": seed, "out": str(out), "sizes": asdict(p)}
    jobs: list[dict] = []
    if pretrain:
        jobs += [{"kind": "pretrain", **common, "source_index": si, "subject_index": j}
                 for si in range(p.pretrain_sources) for j in range(p.pretrain_subjects)]
    jobs += [{"kind": "task", **common, "case": c}
             for t in tasks for s in SPLITS for c in plan_task_cases(p, seed, t, s)]
    return jobs


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _map_jobs(jobs: list[dict], num_processes: int, progress: bool) -> list[dict]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="synth", unit="case", disable=not progress)
    results = []
    if num_processes <= 1:
        for j in jobs:
            results.append(run_job(j))
            bar.update(1)
    else:
        import multiprocessing as mp

        with mp.Pool(num_processes, initializer=_init_worker) as pool:
            for r in pool.imap_unordered(run_job, jobs, chunksize=1):
                results.append(r)
                bar.update(1)
    bar.close()
    return results


def _write_pretrain_tables(out: Path, pre: list[dict], p: SynthPreset, seed: int, summary: dict) -> None:
    pre = sorted(pre, key=lambda r: (r["participants"][0]["dataset"], r["participants"][0]["participant_id"]))
    parts = [row for r in pre for row in r["participants"]]
    infos = [row for r in pre for row in r["mri_info"]]
    write_tsv(out / "pretrain" / "participants.tsv", PARTICIPANT_COLUMNS, parts)
    write_tsv(out / "pretrain" / "mri_info.tsv", MRI_INFO_COLUMNS, infos)
    summary["sources"]["pretrain"] = [asdict(s) for s in pretrain_sources(p, seed)]
    summary["counts"]["pretrain"] = {"subjects": len(pre), "sessions": len(parts), "scans": len(infos)}


def _write_task_tables(out: Path, t: int, tsk: list[dict], p: SynthPreset, seed: int, summary: dict) -> None:
    ts = task_sources(p, seed, t)
    summary["sources"][f"task{t}"] = {s: [asdict(x) for x in ts[s]] for s in SPLITS}
    counts = {}
    for s in SPLITS:
        rows = sorted((r for r in tsk if r["task"] == t and r["split"] == s), key=lambda r: r["index"])
        write_tsv(out / "finetune" / f"task{t}" / s / "participants.tsv", TASK_PARTICIPANT_COLUMNS,
                  [r["row"] for r in rows])
        c = {"cases": len(rows)}
        if TASKS_BY_NUMBER[t].kind in (CLASSIFICATION, EMBEDDING):
            labs = [int(r["label"]) for r in rows]
            c["per_class"] = {str(k): labs.count(k) for k in sorted(set(labs))}
        counts[s] = c
    summary["counts"][f"task{t}"] = counts


def generate(out: str | Path, preset: str = "tiny", seed: int = 0, num_processes: int = 2,
             tasks: tuple[int, ...] | list[int] | None = None, pretrain: bool = True,
             n_train: int | None = None, n_test: int | None = None, previews: bool = True,
             progress: bool = True, n_pretrain_sources: int | None = None,
             n_pretrain_subjects: int | None = None) -> dict:
    """Write FOMO-Synth under `out`; returns the summary also written to OUT/synth.json.

    `n_train`/`n_test` override the preset's per-task sizes (for fast tests); `n_pretrain_sources` and
    `n_pretrain_subjects` (per source) the size of the pretraining corpus (e.g. a few dozen 1 mm scans)."""
    t0 = time.time()
    p = resolve_preset(preset, n_train=n_train, n_test=n_test, pretrain_sources=n_pretrain_sources,
                       pretrain_subjects=n_pretrain_subjects)
    tasks = _resolve_tasks(tasks)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = _plan_jobs(p, preset, seed, out, tasks, pretrain)
    get_atlas(atlas_resolution(p.spacing))  # once in the parent; forked workers inherit it
    results = _map_jobs(jobs, num_processes, progress)

    pre = [r for r in results if r["kind"] == "pretrain"]
    tsk = [r for r in results if r["kind"] == "task"]
    summary: dict = {"preset": preset, "seed": seed, "spacing_mm": p.spacing, "sizes": asdict(p),
                     "tasks": list(tasks), "sources": {}, "counts": {}}
    if pretrain:
        _write_pretrain_tables(out, pre, p, seed, summary)
    for t in tasks:
        _write_task_tables(out, t, tsk, p, seed, summary)
    if previews:
        summary["previews"] = [str(Path(x).relative_to(out)) for x in
                               make_previews(out, tsk, pre, p.previews_per_split)]
    summary["seconds"] = round(time.time() - t0, 1)
    write_text(out / "synth.json", json.dumps(summary, indent=1) + "\n")
    return summary
