"""FOMO-Synth: synthetic brain MRI in the real FOMO folder layouts, with ground truth by construction.

Everything is made from the MNI152 2009 template and tissue maps that nilearn ships inside its
package (no download). How one scan is made, file by file:

  presets.py      how much: voxel size, number of sources, subjects and cases
  sources.py      the scanner ("site"): gain, noise, bias, blur, slice thickness, FOV, skull stripping
  cases.py        who is scanned: the case tables of the task splits (sex, age, target) from the task
                  table (fomo_nnunet.tasks), the pretraining subjects and their sessions
  template.py     the MNI152 template and the maps derived from it (tissue, hull, veins, lesion sites)
  anatomy.py      one head: placed, deformed, aged, with skull and scalp; build_case puts it together
  pathology.py    the lesions, one entry per kind in LESIONS (infarct, meningioma, tumor, trigeminal,
                  pmg, wmh): parameters, template-space maps, painting over the tissue
  contrast.py     the tissue classes and their mean intensity in each sequence
  acquisition.py  one sequence as the scanner records it: contrast, resolution, bias, Rician noise
  geometry.py     grids, rotations, smooth fields, trilinear sampling, blobs and tubes
  layouts.py      writing a pretraining subject (FOMO300K) or a task case (FOMO25), atomically
  corpus.py       generate(): all jobs in a worker pool, the tables, OUT/synth.json
  previews.py     the preview PNGs

Layouts written (see `generate`):
  OUT/pretrain/PT001_SynthA/sub-01/ses-01/<seq>.nii.gz   FOMO300K (seq in t1w t2w flair dwi adc swi t2s)
  OUT/pretrain/{participants,mri_info}.tsv
  OUT/finetune/task{N}/{train,test}/preprocessed/sub_{i}/ses_1/<stem>.nii.gz   FOMO25
  OUT/finetune/task{N}/{train,test}/labels/sub_{i}/ses_1/{label.txt|seg.nii.gz}
  OUT/finetune/task{N}/{train,test}/participants.tsv
  OUT/previews/*.png, OUT/synth.json

Determinism: every case draws from np.random.default_rng([seed, task, split, case]) (pretraining:
[seed, 0, source, subject]), so the output depends on the seed only, never on the process count.
tests/test_synth_golden.py pins the output of a small set bit for bit.
"""
from __future__ import annotations

from .acquisition import out_grid, render
from .anatomy import Subject, build_case, make_subject
from .cases import plan_task_cases
from .contrast import CLASSES, SEQ_MEANS
from .corpus import ALL_TASKS, generate
from .geometry import Grid
from .pathology import LESIONS
from .presets import PRESETS, SPLITS, SynthPreset
from .previews import make_previews
from .sources import Source, make_source, pretrain_sources, task_sources
from .template import Atlas, atlas_resolution, get_atlas

__all__ = [
    "ALL_TASKS", "Atlas", "CLASSES", "Grid", "LESIONS", "PRESETS", "SEQ_MEANS", "SPLITS", "Source", "Subject",
    "SynthPreset", "atlas_resolution", "build_case", "generate", "get_atlas", "make_previews", "make_source",
    "make_subject", "out_grid", "plan_task_cases", "pretrain_sources", "render", "task_sources",
]
