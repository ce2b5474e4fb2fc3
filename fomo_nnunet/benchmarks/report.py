"""The benchmark's report: a table of pretrained vs scratch per task, settings, times and plots."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from fomo_nnunet.plots import _pyplot, _save
from fomo_nnunet.tasks import CLASSIFICATION, REGRESSION, SEGMENTATION, TASKS_BY_NUMBER

# The main metric of each task (the one the goal is stated in); metrics where lower is better.
MAIN_METRIC = {1: "auroc", 2: "dice", 3: "mae", 4: "dice", 5: "auroc", 6: "macro_auroc", 7: "macro_auroc"}
LOWER_IS_BETTER = {"mae"}
UNBOUNDED_METRICS = {"mae"}  # in the target's units (years), not in [0, 1]
# Further metrics shown in the table.
EXTRA_METRICS = {2: ("nsd",), 3: ("pearson_r",), 4: ("nsd",), 6: ("macro_f1",), 7: ("macro_f1",)}


def metric_value(result: dict, name: str) -> float:
    """A metric from an evaluate summary.json or a probe.json (the fairness score under `fairness_score`,
    group gaps of older probe.json files under `gap`)."""
    if name.endswith("_fairness"):
        v = (result.get("fairness_score") or {}).get(name[: -len("_fairness")])
    elif name.endswith("_gap"):
        v = (result.get("gap") or {}).get(name[: -len("_gap")])
    else:
        v = (result.get("metrics") or {}).get(name)
    return float("nan") if v is None else float(v)


VERDICT_RULE = ("better: pretrained wins in every repetition (the paired difference pretrained - scratch favours "
                "it for every seed, N >= 2) and the mean difference exceeds its standard deviation; worse: the "
                "same with scratch winning; tie: every difference is 0; otherwise undecided (one seed is always "
                "undecided).")


def verdict(differences: list[float], lower_is_better: bool) -> str:
    """The rule in VERDICT_RULE, applied to paired differences (pretrained - scratch) over seeds."""
    d = np.array([x for x in differences if not math.isnan(x)], dtype=float)
    if len(d) == 0:
        return "n/a"
    if np.all(np.abs(d) < 1e-9):
        return "tie"
    if len(d) < 2:
        return "undecided"
    signed = -d if lower_is_better else d  # > 0: pretrained better
    consistent = np.all(signed > 1e-9) or np.all(signed < -1e-9)
    if consistent and abs(d.mean()) > d.std(ddof=1):
        return "better" if signed.mean() > 0 else "worse"
    return "undecided"


def _mean_sd(values: list[float]) -> tuple[float, float]:
    v = np.array([x for x in values if not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def table_rows(runs: dict[int, dict[str, dict]]) -> list[dict]:
    """One row per (task, metric) over the repetitions: {seed: {task: {arm: result}}} -> mean, sd, the paired
    difference, wins and the verdict (VERDICT_RULE); each result may carry its `learning_check`."""
    seeds = sorted(runs)
    tasks = list(dict.fromkeys(k for s in seeds for k in runs[s]))
    rows = []
    for key in tasks:
        n = int(key[4:])
        main = MAIN_METRIC[n]
        names = [main, *EXTRA_METRICS.get(n, ())] + (
            ["macro_auroc_fairness", "macro_f1_fairness"] if n == 7 else [])
        arms = {s: runs[s].get(key, {}) for s in seeds}
        not_learned = {arm: sum(1 for s in seeds if not ((arms[s].get(arm) or {}).get("learning_check")
                                                         or {"learned": True})["learned"])
                       for arm in ("pretrained", "scratch")}
        for name in names:
            low = name in LOWER_IS_BETTER or name.endswith("_gap")
            p = [metric_value(arms[s].get("pretrained", {}), name) for s in seeds]
            q = [metric_value(arms[s].get("scratch", {}), name) for s in seeds]
            d = [a - b for a, b in zip(p, q)]
            signed = [(-x if low else x) for x in d if not math.isnan(x)]
            (pm, psd), (qm, qsd), (dm, dsd) = _mean_sd(p), _mean_sd(q), _mean_sd(d)
            rows.append({"task": key, "name": TASKS_BY_NUMBER[n].name, "metric": name, "main": name == main,
                         "lower_is_better": low, "seeds": seeds, "pretrained": p, "scratch": q, "difference": d,
                         "pretrained_mean": pm, "pretrained_sd": psd, "scratch_mean": qm, "scratch_sd": qsd,
                         "difference_mean": dm, "difference_sd": dsd,
                         "wins": sum(x > 1e-9 for x in signed), "losses": sum(x < -1e-9 for x in signed),
                         "n": len(signed), "verdict": verdict(d, low), "not_learned": not_learned})
    return rows


# What "learned" means, per kind of task: strict enough that a model at its starting point fails.
LEARNING_CRITERIA = {
    SEGMENTATION: "predicts foreground in >= 80 % of the test cases and reaches a mean Dice >= 0.3",
    CLASSIFICATION: "the predicted probability varies across test cases: sd >= 0.05",
    REGRESSION: "predictions spread like the targets: prediction sd / target sd >= 0.3",
}
SEG_MIN_FOREGROUND_FRACTION, SEG_MIN_DICE = 0.8, 0.3
CLS_MIN_SD = 0.05
REG_MIN_SD_RATIO = 0.3


def learning_check(kind: str, predictions: Path, scores: Path) -> dict:
    """Did the model learn anything? A look at its test predictions beside the metric.

    A metric compares two models; this says whether each is more than its starting point (criteria in
    LEARNING_CRITERIA): a segmentation model must find the structure in most test cases, a classifier's
    probabilities must move between cases, a regressor must not predict about the training mean for
    everyone. Returns {"learned": bool, "text": one line, "figures": {...}, "criterion": text}.
    """
    import csv

    if kind == SEGMENTATION:
        import nibabel as nib

        files = sorted(Path(predictions).glob("*.nii.gz"))
        with_fg = sum(bool(np.any(np.asarray(nib.load(f).dataobj))) for f in files)
        summary = Path(scores) / "summary.json"
        dice = metric_value(json.loads(summary.read_text()), "dice") if summary.is_file() else float("nan")
        fraction = with_fg / len(files) if files else 0.0
        learned = fraction >= SEG_MIN_FOREGROUND_FRACTION and not math.isnan(dice) and dice >= SEG_MIN_DICE
        return {"learned": bool(learned), "criterion": LEARNING_CRITERIA[kind],
                "figures": {"cases_with_foreground": with_fg, "cases": len(files), "mean_dice": dice},
                "text": f"predicts foreground in {with_fg} of {len(files)} test cases, mean Dice {_fmt(dice)}"}
    with open(Path(scores) / "per_case.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("status") == "ok"]
    pred = np.array([float(r["prediction"]) for r in rows]) if rows else np.zeros(0)
    if kind == CLASSIFICATION:
        spread = float(np.std(pred)) if len(pred) else 0.0
        return {"learned": spread >= CLS_MIN_SD, "criterion": LEARNING_CRITERIA[kind],
                "figures": {"probability_mean": float(np.mean(pred)) if len(pred) else float("nan"),
                            "probability_sd": spread},
                "text": f"predicted probability {np.mean(pred):.3f} ± {spread:.3f} (mean ± sd over test cases)"}
    if kind == REGRESSION:
        target = np.array([float(r["target"]) for r in rows]) if rows else np.zeros(0)
        ratio = float(np.std(pred) / np.std(target)) if len(rows) > 1 and np.std(target) > 0 else 0.0
        return {"learned": ratio >= REG_MIN_SD_RATIO, "criterion": LEARNING_CRITERIA[kind],
                "figures": {"prediction_sd_over_target_sd": ratio},
                "text": f"prediction sd / target sd = {ratio:.2f} (0: the same value for everyone)"}
    raise ValueError(f"no learning check for task kind {kind!r}")


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _fmt_mean_sd(mean: float, sd: float) -> str:
    return _fmt(mean) if math.isnan(sd) else f"{_fmt(mean)} ± {sd:.3f}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| task | metric | pretrained | scratch | difference (pretrained - scratch) | pretrained wins | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        metric = r["metric"] + (" (lower is better)" if r["lower_is_better"] else "")
        if r["main"]:
            metric = f"**{metric}**"
        v = r["verdict"] if r["n"] != 1 else f"{r['verdict']} (1 seed)"
        nl = r.get("not_learned") or {}
        if r["main"] and any(nl.values()):
            v += f" (not learned: pretrained {nl['pretrained']}/{len(r['seeds'])}, scratch " \
                 f"{nl['scratch']}/{len(r['seeds'])})"
        lines.append(f"| {r['task']} {r['name']} | {metric} | {_fmt_mean_sd(r['pretrained_mean'], r['pretrained_sd'])}"
                     f" | {_fmt_mean_sd(r['scratch_mean'], r['scratch_sd'])} | "
                     f"{_fmt_mean_sd(r['difference_mean'], r['difference_sd'])} | {r['wins']}/{r['n']} | {v} |")
    return "\n".join(lines)


def plot_bars(path: Path, rows: list[dict], pretrained_label: str = "pretrained") -> None:
    """Main metric per task, mean over seeds with the sd as error bar; scores in [0, 1] share a panel,
    errors in their own units (MAE) get their own."""
    plt = _pyplot()
    main = [r for r in rows if r["main"]]
    if not main:
        return
    panels = [p for p in ([r for r in main if r["metric"] not in UNBOUNDED_METRICS],
                          [r for r in main if r["metric"] in UNBOUNDED_METRICS]) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(1.6 * len(main) + 3, 4.5), squeeze=False,
                             gridspec_kw={"width_ratios": [len(p) + 0.5 for p in panels]})
    for ax, panel in zip(axes[0], panels):
        x = np.arange(len(panel))
        for offset, arm, label in ((-0.2, "pretrained", pretrained_label), (0.2, "scratch", "from scratch")):
            sd = [0.0 if math.isnan(r[f"{arm}_sd"]) else r[f"{arm}_sd"] for r in panel]
            ax.bar(x + offset, [r[f"{arm}_mean"] for r in panel], 0.4, yerr=sd, capsize=3, label=label)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{r['task']}\n{r['metric']}" + (" ↓" if r["lower_is_better"] else "") for r in panel])
        if panel[0]["metric"] not in UNBOUNDED_METRICS:
            ax.set_ylim(0, 1)
    axes[0][0].legend()
    n = len(main[0]["seeds"])
    fig.suptitle(f"FOMO-Synth: pretrained vs scratch, out-of-domain test split, mean ± sd over {n} seed(s) "
                 "(↓: lower is better)")
    fig.tight_layout()
    _save(fig, path)


def plot_overlay(path: Path, image: Path, gt: Path, predictions: dict[str, Path], title: str) -> None:
    """Mid axial slice through the ground truth's centre: image, ground truth and each prediction."""
    import nibabel as nib

    plt = _pyplot()
    img = np.asanyarray(nib.load(image).dataobj).astype(float)
    ref = np.asanyarray(nib.load(gt).dataobj)
    z = int(np.argwhere(ref > 0)[:, 2].mean()) if ref.any() else img.shape[2] // 2
    panels = {"ground truth": ref, **{k: np.asanyarray(nib.load(p).dataobj) for k, p in predictions.items()
                                      if p.is_file()}}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (name, seg) in zip(np.atleast_1d(axes), panels.items()):
        ax.imshow(img[:, :, z].T, cmap="gray", origin="lower")
        masked = np.ma.masked_where(seg[:, :, z] == 0, seg[:, :, z])
        ax.imshow(masked.T, cmap="autumn", alpha=0.6, origin="lower", vmin=0, vmax=max(1, int(ref.max())))
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def learning_checks(runs: dict[int, dict[str, dict]]) -> list[dict]:
    """Every (seed, task, arm) learning check, flat, for the report and results.json."""
    return [{"seed": seed, "task": task, "arm": arm, **result["learning_check"]}
            for seed, tasks in sorted(runs.items()) for task, arms in tasks.items()
            for arm, result in arms.items() if result.get("learning_check")]


def _write_results_json(out: Path, runs: dict[int, dict[str, dict]], rows: list[dict], checks: list[dict],
                        settings: dict, step_seconds: dict[str, float]) -> None:
    """report/results.json: the table rows, learning checks, every run, settings and step times."""
    (out / "results.json").write_text(json.dumps({
        "seeds": sorted(runs), "verdict_rule": VERDICT_RULE, "learning_criteria": LEARNING_CRITERIA,
        "rows": rows, "learning_checks": checks, "runs": {str(s): r for s, r in sorted(runs.items())},
        "settings": settings, "step_seconds": step_seconds}, indent=1, default=str))


def _draw_pictures(out: Path, rows: list[dict], pretrain_folder: Path | None, overlays: list[dict] | None,
                   pretrained_label: str = "pretrained") -> list[str]:
    """The bar plot, the pretraining pictures (copied from its first fold) and the overlays, in report/;
    returns their file names. An overlay that cannot be drawn is skipped with a printed line."""
    plot_bars(out / "pretrained_vs_scratch.png", rows, pretrained_label)
    pictures = ["pretrained_vs_scratch.png"]
    if pretrain_folder is not None:
        fold = next(iter(sorted(pretrain_folder.glob("fold_*"))), None)
        for name, dst in (("progress.png", "pretraining_loss.png"), ("reconstruction.png", "reconstruction.png")):
            if fold is not None and (fold / name).is_file():
                shutil.copy(fold / name, out / dst)
                pictures.append(dst)
    for o in overlays or []:
        try:
            plot_overlay(out / o["file"], o["image"], o["gt"], o["predictions"], o["title"])
            pictures.append(o["file"])
        except (OSError, ValueError) as e:  # a picture must not sink the report
            print(f"overlay {o['file']} not drawn: {e}")
    return pictures


def _learning_section(checks: list[dict]) -> list[str]:
    """'Did the models learn?': every model's learning check (no section without checks)."""
    if not checks:
        return []
    failed = [c for c in checks if not c["learned"]]
    return [
        "## Did the models learn?", "",
        "Independent of which arm wins: what each model predicts on the test split, per seed and arm. A model "
        "that fails its criterion has not left its starting point, and a comparison involving it is noise. "
        "Criteria: " + "; ".join(f"{k}: {v}" for k, v in LEARNING_CRITERIA.items()) + ".", "",
        f"**{len(checks) - len(failed)} of {len(checks)} finetuned models learned.**", "",
        *(f"- seed {c['seed']} {c['task']} {c['arm']}: {c['text']}" + ("" if c["learned"] else
                                                                     " **(has not learned)**") for c in checks),
        ""]


def adaptation_lines(runs: dict[int, dict[str, dict]]) -> list[str]:
    """One line per seed and task whose pretrained arm ran with an adaptation from its plans
    (`benchmark --adapt`): the choice and, for `auto`, every candidate's pooled validation score."""
    from fomo_nnunet.plans.adapt_planner import choice_words

    lines = []
    for seed, tasks in sorted(runs.items()):
        for task, arms in tasks.items():
            entry = (arms.get("pretrained") or {}).get("adaptation")
            if not entry:
                continue
            scores = ((entry.get("evidence") or {}).get("candidates") or {})
            detail = ", ".join(f"{c} {s['metric']} {_fmt(s['value']) if s['value'] is not None else 'n/a'}"
                               for c, s in scores.items())
            lines.append(f"- seed {seed} {task}: **{entry['name']}** (chosen by {choice_words(entry)}"
                         + (f"; cross-validation on the training cases: {detail}" if detail else "") + ")")
    return lines


def _adaptation_section(runs: dict[int, dict[str, dict]]) -> list[str]:
    lines = adaptation_lines(runs)
    if not lines:
        return []
    return ["## Adaptation of the pretrained arm", "",
            "How each pretrained model used its checkpoint (`fomo-nnunet plan transfer --adapt`); `auto` chose by "
            "cross-validation on the training cases only (the test split never took part).", "", *lines, ""]


def _submission_section(seeds: list[int], container: dict[str, dict] | None) -> list[str]:
    """'The submission': the container's output per task (no section without container runs)."""
    if not container:
        return []
    return ["## The submission", "",
            f"The pretrained models of seed {seeds[0]} bundled (`fomo-nnunet bundle`) and run through the "
            "container's entry (`container/predict.py`) on one out-of-domain test case per task; each output "
            "passes the official validator's rules:", "",
            *(f"- {k}: `{Path(v['output']).name}`: {v['check']}" for k, v in container.items()), ""]


def _report_lines(rows: list[dict], checks: list[dict], seeds: list[int], settings: dict,
                  step_seconds: dict[str, float], container: dict[str, dict] | None, pictures: list[str],
                  runs: dict[int, dict[str, dict]] | None = None) -> list[str]:
    """The lines of report.md."""
    main = [r for r in rows if r["main"]]
    counts = {v: [r["task"] for r in main if r["verdict"] == v] for v in ("better", "worse", "undecided", "tie")}
    total = sum(step_seconds.values())
    return [
        "# FOMO-Synth benchmark", "",
        f"Preset **{settings.get('preset')}**, {len(seeds)} repetition(s) (seeds {', '.join(map(str, seeds))}). "
        "Repetition s pretrains ONE MAE checkpoint with seed s and finetunes it per task with seed s (tasks 6/7: a "
        "linear probe on its frozen embeddings), against the from-scratch twin trained with the same seed, data "
        "order and budget (tasks 6/7: the same architecture with random weights drawn with seed s). Scores on "
        "each task's out-of-domain test split (test sources differ from training sources); mean ± sd over the "
        "seeds, the paired difference per seed, and in how many seeds pretraining won.", "",
        markdown_table(rows), "",
        f"Verdict rule: {VERDICT_RULE}", "",
        "Main metrics: " + "; ".join(f"{v} on {len(t)} ({', '.join(t)})" for v, t in counts.items() if t) + ".", "",
        *_learning_section(checks),
        *_adaptation_section(runs or {}),
        *_submission_section(seeds, container),
        "## Settings", "",
        *(f"- {k}: `{v}`" for k, v in settings.items()), "",
        "## Time", "",
        f"Total {total / 60:.1f} min over {len(step_seconds)} steps; the longest:", "",
        *(f"- {k}: {v:.0f} s" for k, v in sorted(step_seconds.items(), key=lambda kv: -kv[1])[:12]), "",
        "## Pictures", "",
        *(f"![{p}]({p})" for p in pictures), "",
    ]


def write_report(work: Path, runs: dict[int, dict[str, dict]], settings: dict, step_seconds: dict[str, float],
                 pretrain_folder: Path | None = None, overlays: list[dict] | None = None,
                 container: dict[str, dict] | None = None) -> Path:
    """work/report/report.md (+ results.json and PNGs) from {seed: {task: {arm: result}}}; returns its path."""
    out = work / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(runs)
    checks = learning_checks(runs)
    _write_results_json(out, runs, rows, checks, settings, step_seconds)
    trainer = settings.get("pretraining trainer")
    pictures = _draw_pictures(out, rows, pretrain_folder, overlays,
                              f"pretrained ({trainer})" if trainer else "pretrained")
    lines = _report_lines(rows, checks, sorted(runs), settings, step_seconds, container, pictures, runs)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
