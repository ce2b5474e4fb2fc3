"""Writing a case in the real folder layouts: FOMO300K for pretraining, FOMO25 for the tasks.

  OUT/pretrain/PT001_SynthA/sub-01/ses-01/<seq>.nii.gz   FOMO300K (seq in t1w t2w flair dwi adc swi t2s)
  OUT/pretrain/{participants,mri_info}.tsv
  OUT/finetune/task{N}/{train,test}/preprocessed/sub_{i}/ses_1/<stem>.nii.gz   FOMO25
  OUT/finetune/task{N}/{train,test}/labels/sub_{i}/ses_1/{label.txt|seg.nii.gz}
  OUT/finetune/task{N}/{train,test}/participants.tsv

The FOMO25 layout is the challenge's (https://fomo25.github.io); FOMO300K is the pretraining
corpus's BIDS-like dataset/subject/session layout with its participants and mri_info tables.
One job writes one pretraining subject or one task case; the jobs are top-level functions of plain
dicts, so a worker pool of any start method can run them. Files are written atomically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fomo_nnunet.io import atomic as A
from fomo_nnunet.tasks import REGRESSION, SEGMENTATION, TASKS_BY_NUMBER, Task

from .acquisition import out_grid, render
from .anatomy import build_case
from .cases import PretrainSubject, draw_case_recipe, draw_pretrain_subject, draw_session_sequences, \
    draw_vessel_brightness
from .contrast import PRETRAIN_RENDER, STEM_RENDER, echo_times
from .pathology import LESIONS
from .presets import SPLITS, SynthPreset, preset_from_dict
from .sources import Source, isotropic, pretrain_sources, task_sources
from .template import Atlas, atlas_resolution, get_atlas

PARTICIPANT_COLUMNS = ["dataset", "participant_id", "session_id", "sex", "age", "handedness", "group"]
MRI_INFO_COLUMNS = ["dataset", "participant_id", "session_id", "sequence", "field_strength", "manufacturer",
                    "TE", "TR"]
TASK_PARTICIPANT_COLUMNS = ["participant_id", "session_id", "sex", "age", "source"]


# --- atomic writers ----------------------------------------------------------------------------


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with A.replacing(path, suffix=".tmp.nii.gz") as tmp:  # nibabel picks the format by the name
        nib.save(img, str(tmp))


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    A.write_text(text, path)


def write_tsv(path: Path, columns: list[str], rows: list[dict]) -> None:
    lines = ["\t".join(columns)] + ["\t".join(str(r.get(c, "n/a")) for c in columns) for r in rows]
    write_text(path, "\n".join(lines) + "\n")


# --- FOMO300K: one pretraining subject -----------------------------------------------------------


def _write_pretrain_session(ses_dir: Path, ps: PretrainSubject, srng: np.random.Generator, src: Source,
                            atlas: Atlas, preset: SynthPreset) -> list[str]:
    """Draw the session's sequences, build the head once, render and write each sequence."""
    seqs = draw_session_sequences(srng, preset.pretrain_seq_range)
    strip = src.skull_stripped
    grid, P, extra = build_case(atlas, ps.subject, srng, src, preset.spacing, strip, ps.path)
    g2, resample = out_grid(grid, src)
    for q in seqs:
        img = render(P, extra, PRETRAIN_RENDER[q], src, srng, resample, strip)
        save_nifti(ses_dir / f"{q}.nii.gz", img, g2.affine)
    return seqs


def write_pretrain_subject(job: dict) -> dict:
    """All sessions of pretraining subject `subject_index` of source `source_index`."""
    preset = preset_from_dict(job["sizes"])
    seed, si, j = job["seed"], job["source_index"], job["subject_index"]
    src = pretrain_sources(preset, seed)[si]
    atlas = get_atlas(atlas_resolution(preset.spacing))
    ps = draw_pretrain_subject(np.random.default_rng([seed, 0, si, j]), preset.pretrain_max_sessions)
    sub = f"sub-{j + 1:02d}"
    parts, infos = [], []
    for s in range(ps.n_sessions):
        ses = f"ses-{s + 1:02d}"
        srng = np.random.default_rng([seed, 0, si, j, s + 1])
        seqs = _write_pretrain_session(Path(job["out"]) / "pretrain" / src.name / sub / ses, ps, srng, src,
                                       atlas, preset)
        for q in seqs:
            te, tr = echo_times(q, src.field_strength)
            infos.append(dict(dataset=src.name, participant_id=sub, session_id=ses, sequence=q,
                              field_strength=src.field_strength, manufacturer=src.manufacturer, TE=te, TR=tr))
        parts.append(dict(dataset=src.name, participant_id=sub, session_id=ses, sex=ps.sex,
                          age=round(ps.age + 1.5 * s, 1), handedness=ps.handedness, group=ps.group))
    return {"kind": "pretrain", "participants": parts, "mri_info": infos, "n_scans": len(infos)}


# --- FOMO25: one task case ---------------------------------------------------------------------


def case_source(preset: SynthPreset, seed: int, task: Task, case: dict) -> Source:
    """The scanner of a case (with thick slices removed where the task acquires isotropically)."""
    src = task_sources(preset, seed, task.number)[case["split"]][case["source_index"]]
    return isotropic(src) if task.synth_isotropic else src


def skull_stripped(task: Task, src: Source) -> bool:
    return src.skull_stripped if task.synth_skull_stripped is None else task.synth_skull_stripped


def writes_mask(task: Task) -> bool:
    """A seg.nii.gz per case where any of the task's lesions makes a mask (a class task may have one too)."""
    return any(LESIONS[k].makes_mask for k in task.synth_lesions)


def _write_targets(lab_dir: Path, task: Task, case: dict, seg: np.ndarray, affine: np.ndarray) -> Path | None:
    """seg.nii.gz (the lesion mask) and/or label.txt (the image-level target) of a case."""
    seg_path = None
    if writes_mask(task):
        seg_path = lab_dir / "seg.nii.gz"
        save_nifti(seg_path, seg, affine)
    if task.kind != SEGMENTATION:
        label = case["label"]
        write_text(lab_dir / "label.txt", (f"{label:.1f}" if task.kind == REGRESSION else f"{int(label)}") + "\n")
    return seg_path


def write_task_case(job: dict) -> dict:
    """One FOMO25 case: its input files, its targets, and its participants.tsv row."""
    preset = preset_from_dict(job["sizes"])
    seed, case = job["seed"], job["case"]
    task, split, i = TASKS_BY_NUMBER[case["task"]], case["split"], case["index"]
    src = case_source(preset, seed, task, case)
    atlas = get_atlas(atlas_resolution(preset.spacing))
    rng = np.random.default_rng([seed, task.number, SPLITS.index(split), i])
    recipe = draw_case_recipe(task, case, rng)
    strip = skull_stripped(task, src)
    grid, P, extra = build_case(atlas, recipe.subject, rng, src, preset.spacing, strip, recipe.path)
    g2, resample = out_grid(grid, src)
    vessel_bright = draw_vessel_brightness(task, rng)
    base, sub = Path(job["out"]) / "finetune" / task.key / split, f"sub_{i + 1}"
    files = []
    for stem in recipe.stems:
        img = render(P, extra, STEM_RENDER[stem], src, rng, resample, strip, vessel_bright=vessel_bright)
        files.append(base / "preprocessed" / sub / "ses_1" / f"{stem}.nii.gz")
        save_nifti(files[-1], img, g2.affine)
    seg = resample(extra["seg"], 0).astype(np.uint8) if writes_mask(task) else None
    seg_path = _write_targets(base / "labels" / sub / "ses_1", task, case, seg, g2.affine)
    row = dict(participant_id=sub, session_id="ses_1", sex=case["sex"], age=case["age"], source=src.name)
    return {"kind": "task", "task": task.number, "split": split, "index": i, "row": row,
            "files": [str(f) for f in files], "seg": str(seg_path) if seg_path else None,
            "label": case.get("label")}


def run_job(job: dict) -> dict:
    return write_pretrain_subject(job) if job["kind"] == "pretrain" else write_task_case(job)
