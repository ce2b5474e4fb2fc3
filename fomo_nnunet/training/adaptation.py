"""Adaptations: how a finetuning trainer uses the pretrained weights, chosen per task in the plans.

A finetuning trainer's recipe (fomo_nnunet.training.recipes.FinetuneRecipe) fixes its budget; how the pretrained
tensors take part in it is a handful of its settings (`ADAPTABLE`). An adaptation names one combination of them,
relative to the trainer's own recipe, so that it holds for every budget:

- `recipe`: the trainer's recipe as it is (for the fomo trainers: LP-FT, a few epochs in which only the fresh
  parts learn, then the whole network warms up; Kumar et al., "Fine-Tuning can Distort Pretrained Features and
  Underperform Out-of-Distribution", ICLR 2022);
- `gentle`: the same start, then the pretrained tensors learn at a tenth of the fresh learning rate (layer-wise
  learning-rate scaling as in the FOMO25 baselines and the MAE paper's finetuning, which keeps the pretrained
  features close to where they were);
- `full`: full finetuning at the fresh learning rate from the first step (no frozen start, scale 1);
- `encoder` (segmentation): the encoder alone is loaded, the decoder starts fresh (the MAE decoder learnt to
  reconstruct intensities, not to segment).

`fomo-nnunet plan transfer --adapt NAME` records one in the plans' `fomo` entry (`adaptation`); `--adapt auto`
chooses one by cross-validation on the training cases (plans/adapt_planner.py) and records the evidence beside
it. The trainer applies the plans' adaptation to its recipe when it is built (fomo_nnunet.finetune.Finetuning)
and records it in `recipe.json` and every checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from fomo_nnunet.tasks import SEGMENTATION

# the recipe settings an adaptation may change (FinetuneRecipe's); the budget stays the trainer's
ADAPTABLE = ("fresh_only_epochs", "warmup_epochs", "pretrained_lr_scale", "load_decoder")
AUTO = "auto"
PLANS_KEY = "adaptation"  # in the plans' `fomo` entry


@dataclass(frozen=True)
class Adaptation:
    """A named way to use the pretrained weights: `settings` overrides the trainer's recipe (`ADAPTABLE` only);
    `kinds` are the task kinds it means something for."""

    name: str
    description: str
    settings: tuple[tuple[str, object], ...] = ()
    kinds: tuple[str, ...] | None = None  # None: every kind

    def __post_init__(self):
        unknown = [k for k, _ in self.settings if k not in ADAPTABLE]
        if unknown:
            raise ValueError(f"adaptation {self.name!r} sets {unknown}; an adaptation may set only {ADAPTABLE}")

    def applies_to(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds

    def apply(self, recipe):
        """`recipe` with this adaptation's settings (validated again by the recipe's dataclass)."""
        return apply_settings(recipe, dict(self.settings))


ADAPTATIONS = {a.name: a for a in (
    Adaptation("recipe", "the trainer's recipe as it is"),
    Adaptation("gentle", "the recipe's frozen start, then the pretrained tensors at 0.1 x the fresh learning rate",
               (("pretrained_lr_scale", 0.1),)),
    Adaptation("full", "full finetuning at the fresh learning rate from the first step (no frozen start)",
               (("fresh_only_epochs", 0), ("pretrained_lr_scale", 1.0))),
    Adaptation("encoder", "the pretrained encoder only; the decoder starts fresh", (("load_decoder", False),),
               kinds=(SEGMENTATION,)),
)}
DEFAULT_CANDIDATES = ("recipe", "gentle", "full", "encoder")


def get_adaptation(name: str) -> Adaptation:
    if name not in ADAPTATIONS:
        raise ValueError(f"unknown adaptation {name!r}; choose from {', '.join(ADAPTATIONS)} (or {AUTO})")
    return ADAPTATIONS[name]


def apply_settings(recipe, settings: dict):
    """`recipe` with `settings` (names from `ADAPTABLE`, each a field of the recipe)."""
    names = {f.name for f in fields(recipe)}
    bad = [k for k in settings if k not in ADAPTABLE or k not in names]
    if bad:
        raise ValueError(f"an adaptation may set only {', '.join(ADAPTABLE)}; got {', '.join(map(repr, bad))}")
    return replace(recipe, **settings)


def distinct_candidates(names, kind: str, recipe) -> tuple[list[str], dict[str, str]]:
    """(the candidates worth training, {skipped name: why}): those that mean something for `kind`, in the given
    order, each giving a recipe that no earlier candidate gives already."""
    kept, skipped, seen = [], {}, {}
    for name in names:
        adaptation = get_adaptation(name)
        if not adaptation.applies_to(kind):
            skipped[name] = f"not for {kind} tasks"
            continue
        effective = adaptation.apply(recipe)
        if effective in seen:
            skipped[name] = f"the same recipe as {seen[effective]!r} for this trainer"
            continue
        seen[effective] = name
        kept.append(name)
    return kept, skipped


def plans_entry(name: str, chosen_by: str, evidence: dict | None = None) -> dict:
    """What the plans record: the adaptation, its settings, who chose it and on what evidence."""
    adaptation = get_adaptation(name)
    return {"name": name, "settings": dict(adaptation.settings), "description": adaptation.description,
            "chosen_by": chosen_by, "evidence": evidence}


def adaptation_from_plans(plans: dict) -> dict | None:
    """The plans' adaptation entry, or None (the trainer's recipe as it is)."""
    return (plans.get("fomo") or {}).get(PLANS_KEY)


def adapted_recipe(recipe, plans: dict):
    """The trainer's `recipe` with the plans' adaptation applied (unchanged when the plans name none)."""
    entry = adaptation_from_plans(plans)
    if not entry:
        return recipe
    try:
        return apply_settings(recipe, dict(entry.get("settings") or {}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"plans '{plans.get('plans_name')}': adaptation {entry.get('name')!r} cannot be applied "
                         f"to {type(recipe).__name__}: {e}") from None
