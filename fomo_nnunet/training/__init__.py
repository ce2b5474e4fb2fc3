"""The trainer toolkit: what the fomo trainers share, as mixins placed before nnU-Net's trainer in the bases.

A trainer file then reads as its recipe: class attributes and the few methods that differ.

- `adaptation`: how a finetuning trainer uses the pretrained weights (`plan transfer --adapt`), applied to its
  recipe from the plans.
- `recipes`: recipes as frozen, validated dataclasses (`Budget`, `FinetuneRecipe`, `SegRecipe`,
  `ImageLevelRecipe` with its `HeadSpec`) in nnU-Net's attribute names, and the named recipes of the trainers.
- `runs`: `FomoTrainer`, the base of every fomo trainer: its recipe (applied to nnU-Net's attributes and
  recorded in every checkpoint and the fold folder), its seed (every random stream derived from it), DDP on
  any device and node (`from_all_ranks` gathers a value).
- `schedules`: the one learning-rate schedule, `EpochSchedule` stepped by `EpochLR` (warmup, then polynomial or
  cosine decay; pretrained parameter groups may start late).
- `steps`: `AmpStep`, nnU-Net's training step (mixed precision on CUDA, gradient clipping at
  `grad_clip`) around the trainer's `training_loss`; `unwrap`, the network inside DDP / torch.compile.
- `epochs`: `EpochEnd`, nnU-Net's epoch end (log lines, checkpoint_latest, checkpoint_best, pictures)
  judged by the trainer's own number; `plot_losses` draws progress.png.
- `checkpoints`: `DescribedCheckpoints`, checkpoints that carry `fomo_metadata` (pretraining).
- `preemption`: `PreemptibleRun`, nnU-Net's training loop with stop signals turned into checkpoints,
  atomic checkpoints with every random stream, mid-epoch resume, a fallback for an unreadable checkpoint.

The toolkit builds on nnU-Net and the domain modules (seeding, distributed, transfer, plots); it never
imports trainers or commands.
"""
import importlib

# the names the package offers, and the module of each: imported on first use (PEP 562), so that a light module
# of the package (recipes, adaptation: read by the command line's parsers) does not pull in torch and nnU-Net
_EXPORTS = {"DescribedCheckpoints": "checkpoints", "EpochEnd": "epochs", "PreemptibleRun": "preemption",
            "Budget": "recipes", "FomoTrainer": "runs", "COSINE": "schedules", "POLY": "schedules",
            "EpochLR": "schedules", "EpochSchedule": "schedules", "every_nth_epoch": "schedules", "AmpStep": "steps",
            "unwrap": "steps"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
