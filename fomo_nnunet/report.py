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


def table_rows(results: dict[str, dict]) -> list[dict]:
    """One row per (task, metric): pretrained, scratch, difference and whether pretraining helped."""
    rows = []
    for key, variants in results.items():
        n = int(key[4:])
        main = MAIN_METRIC[n]
        names = [main, *EXTRA_METRICS.get(n, ())] + (["macro_auroc_fairness", "macro_f1_fairness"] if n == 7 else [])
        for name in names:
            p = metric_value(variants.get("pretrained", {}), name)
            s = metric_value(variants.get("scratch", {}), name)
            low = name in LOWER_IS_BETTER or name.endswith("_gap")
            diff = p - s
            tie = not math.isnan(diff) and abs(diff) < 1e-9
            helped = None if math.isnan(diff) or tie else (diff < 0 if low else diff > 0)
            checks = [(variants.get(v) or {}).get("learning_check") for v in ("pretrained", "scratch")]
            rows.append({"task": key, "name": TASKS_BY_NUMBER[n].name, "metric": name, "main": name == main,
                         "lower_is_better": low, "pretrained": p, "scratch": s, "difference": diff,
                         "pretraining_helped": helped, "tie": tie,
                         "neither_learned": all(c and c["degenerate"] for c in checks)})
    return rows


def learning_check(kind: str, predictions: Path, scores: Path) -> dict:
    """Did the model learn anything? A look at its test predictions, independent of the metric.

    A metric compares two models; this says whether either is more than its starting point:
    a segmentation model that predicts no foreground anywhere, a classifier whose probabilities
    barely move between cases, a regressor that predicts about the training mean for everyone.
    Returns {"text": one line, "degenerate": bool}.
    """
    import csv

    if kind == SEGMENTATION:
        import nibabel as nib

        files = sorted(Path(predictions).glob("*.nii.gz"))
        with_fg = sum(bool(np.any(np.asarray(nib.load(f).dataobj))) for f in files)
        return {"text": f"predicts foreground in {with_fg} of {len(files)} test cases", "degenerate": with_fg == 0}
    with open(Path(scores) / "per_case.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("status") == "ok"]
    pred = np.array([float(r["prediction"]) for r in rows]) if rows else np.zeros(0)
    if kind == CLASSIFICATION:
        spread = float(np.std(pred)) if len(pred) else 0.0
        return {"text": f"predicted probability {np.mean(pred):.3f} ± {spread:.3f} (mean ± sd over test cases)",
                "degenerate": spread < 0.02}
    if kind == REGRESSION:
        target = np.array([float(r["target"]) for r in rows]) if rows else np.zeros(0)
        ratio = float(np.std(pred) / np.std(target)) if len(rows) > 1 and np.std(target) > 0 else 0.0
        return {"text": f"prediction sd / target sd = {ratio:.2f} (0: the same value for everyone)",
                "degenerate": ratio < 0.1}
    raise ValueError(f"no learning check for task kind {kind!r}")


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| task | metric | pretrained | scratch | difference | pretraining helped |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        helped = ("tie" if r.get("tie") else "n/a") if r["pretraining_helped"] is None else \
            ("yes" if r["pretraining_helped"] else "no")
        if r.get("neither_learned"):
            helped += " (neither learned)"
        metric = r["metric"] + (" (lower is better)" if r["lower_is_better"] else "")
        if r["main"]:
            metric = f"**{metric}**"
        lines.append(f"| {r['task']} {r['name']} | {metric} | {_fmt(r['pretrained'])} | {_fmt(r['scratch'])} | "
                     f"{_fmt(r['difference'])} | {helped} |")
    return "\n".join(lines)


def plot_bars(path: Path, rows: list[dict]) -> None:
    """Main metric per task; scores in [0, 1] share a panel, errors in their own units (MAE) get their own."""
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
        ax.bar(x - 0.2, [r["pretrained"] for r in panel], 0.4, label="pretrained (MAE)")
        ax.bar(x + 0.2, [r["scratch"] for r in panel], 0.4, label="from scratch")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{r['task']}\n{r['metric']}" + (" ↓" if r["lower_is_better"] else "") for r in panel])
        if panel[0]["metric"] not in UNBOUNDED_METRICS:
            ax.set_ylim(0, 1)
    axes[0][0].legend()
    fig.suptitle("FOMO-Synth: pretrained vs scratch, out-of-domain test split (↓: lower is better)")
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


def write_report(work: Path, results: dict[str, dict], settings: dict, step_seconds: dict[str, float],
                 pretrain_folder: Path | None = None, overlays: list[dict] | None = None,
                 container: dict[str, dict] | None = None) -> Path:
    """work/report/report.md (+ results.json and PNGs); returns the report's path."""
    out = work / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(results)
    (out / "results.json").write_text(json.dumps({"rows": rows, "results": results, "settings": settings,
                                                  "step_seconds": step_seconds}, indent=1, default=str))
    plot_bars(out / "pretrained_vs_scratch.png", rows)
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
    main = [r for r in rows if r["main"]]
    helped = [r["task"] for r in main if r["pretraining_helped"]]
    checks = [(task, variant, r["learning_check"]) for task, variants in results.items()
              for variant, r in variants.items() if r.get("learning_check")]
    total = sum(step_seconds.values())
    lines = [
        "# FOMO-Synth benchmark", "",
        f"Preset **{settings.get('preset')}**, seed {settings.get('seed')}. One MAE-pretrained checkpoint, finetuned "
        "per task (tasks 6/7: a linear probe on its frozen embeddings), against the from-scratch twin with the same "
        "budget (tasks 6/7: the same architecture with random weights). Scores on each task's out-of-domain test "
        "split (test sources differ from training sources).", "",
        markdown_table(rows), "",
        f"Pretraining helped on the main metric of {len(helped)} of {len(main)} tasks"
        + (f" ({', '.join(helped)})." if helped else "."), "",
        *(["## Did the models learn?", "",
            "Independent of which variant wins: what each model predicts on the test split. A near-constant "
            "prediction means the budget was too small for that model to leave its starting point, and the "
            "comparison above is noise for that task.", "",
            *(f"- {task} {variant}: {c['text']}" + (" **(has not learned)**" if c["degenerate"] else "")
              for task, variant, c in checks), "",
            *(["Models that have not learned need more steps: the `tiny-long` preset finetunes the same "
               "checkpoint 10x longer (60 epochs instead of 6).", ""]
              if any(c["degenerate"] for _, _, c in checks) else [])]
          if checks else []),
        *(["## The submission", "",
            "The pretrained models bundled (`fomo-nnunet bundle`) and run through the container's entry "
            "(`container/predict.py`) on one out-of-domain test case per task; each output passes the "
            "official validator's rules:", "",
            *(f"- {k}: `{Path(v['output']).name}`: {v['check']}" for k, v in container.items()), ""]
          if container else []),
        "## Settings", "",
        *(f"- {k}: `{v}`" for k, v in settings.items()), "",
        "## Time", "",
        f"Total {total / 60:.1f} min over {len(step_seconds)} steps; the longest:", "",
        *(f"- {k}: {v:.0f} s" for k, v in sorted(step_seconds.items(), key=lambda kv: -kv[1])[:12]), "",
        "## Pictures", "",
        *(f"![{p}]({p})" for p in pictures), "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
