"""Trainers stay readable recipes: every trainer class short with a short MRO, its recipe a validated, frozen
dataclass recorded as plain data, and a trainer refusing a task of another kind before anything is built."""
from __future__ import annotations

import dataclasses
import inspect
import json
import math

import pytest

from fomo_nnunet.exit_codes import BAD_INPUT
from fomo_nnunet.tasks import CLASSIFICATION, REGRESSION, SEGMENTATION, TASKS_BY_NUMBER

MAX_LINES, MAX_MRO = 150, 12


def _trainer_classes() -> dict[str, type]:
    import importlib
    import pkgutil

    from fomo_nnunet.paths import TRAINERS_PACKAGE, trainers_dir

    found = {}
    for m in pkgutil.iter_modules([str(trainers_dir())]):
        module = importlib.import_module(f"{TRAINERS_PACKAGE}.{m.name}")
        found.update({name: obj for name, obj in vars(module).items()
                      if inspect.isclass(obj) and name.startswith("nnUNetTrainer") and obj.__module__ == module.__name__})
    return found


TRAINERS = _trainer_classes()


def test_every_trainer_class_is_at_most_150_lines_with_an_mro_of_at_most_12():
    too_long = {n: len(inspect.getsourcelines(c)[0]) for n, c in TRAINERS.items()
                if len(inspect.getsourcelines(c)[0]) > MAX_LINES}
    too_deep = {n: len(c.__mro__) for n, c in TRAINERS.items() if len(c.__mro__) > MAX_MRO}
    assert len(TRAINERS) > 40 and not too_long and not too_deep, (too_long, too_deep)


def test_no_trainer_exists_only_to_train_from_scratch():
    """From scratch is the plans' setting: no class carries it in its name or an attribute."""
    assert not [n for n in TRAINERS if n.endswith("_scratch")]
    assert not [n for n, c in TRAINERS.items() if hasattr(c, "use_pretrained")]


def test_every_trainer_recipe_is_a_frozen_dataclass_recorded_as_json():
    from fomo_nnunet.training.recipes import recipe_record

    for name, cls in TRAINERS.items():
        assert dataclasses.is_dataclass(cls.recipe), name
        with pytest.raises(dataclasses.FrozenInstanceError):
            cls.recipe.num_epochs = 1
        record = json.loads(json.dumps(recipe_record(cls.recipe)))  # plain JSON values
        assert record["recipe_class"] == type(cls.recipe).__name__ and record["num_epochs"] == cls.recipe.num_epochs


def test_a_variant_is_one_line_and_its_recipe_reaches_nnunets_attributes():
    from fomo_nnunet.trainers.nnUNetTrainerFomoImageLevel import nnUNetTrainerFomoReg_tiny_long
    from fomo_nnunet.training.recipes import TINY_REG

    assert nnUNetTrainerFomoReg_tiny_long.recipe == dataclasses.replace(TINY_REG, num_epochs=72)

    class Trainer:
        pass

    t = Trainer()
    TINY_REG.apply(t)
    assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch, t.initial_lr, t.weight_decay,
            t.save_every) == (24, 15, 3, 3e-3, 1e-4, 5)


@pytest.mark.parametrize("make, field, message", [
    ("Budget", dict(num_epochs=0), "num_epochs must be a whole number >= 1"),
    ("Budget", dict(initial_lr=float("nan")), "initial_lr must be a number"),
    ("FinetuneRecipe", dict(optimizer_name="adam"), "optimizer_name must be one of 'sgd', 'adamw'"),
    ("SegRecipe", dict(oversample_foreground_percent=1.5), "oversample_foreground_percent"),
    ("SegRecipe", dict(ce_class_weighting="inverse"), "ce_class_weighting must be one of None"),
    ("ImageLevelRecipe", dict(augment="spatial"), "augment must be one of True, False, 'intensity'"),
    ("HeadSpec", dict(pooling="max"), "pooling must be one of 'avg', 'avgmax'"),
    ("HeadSpec", dict(stages=(-1, -1)), "stages must be distinct"),
    ("MAEObjective", dict(mask_ratio=1.0), "mask_ratio must be a number in"),
    ("PretrainRecipe", dict(adamw_betas=(0.9,)), "adamw_betas must be two numbers"),
])
def test_a_bad_recipe_is_refused_where_it_is_made_naming_the_field(make, field, message):
    from fomo_nnunet.ssl import recipe as ssl_recipe
    from fomo_nnunet.training import recipes

    cls = getattr(recipes, make, None) or getattr(ssl_recipe, make)
    with pytest.raises(ValueError, match=message):
        cls(**field)


def test_a_recipe_without_a_gradient_limit_is_recorded_as_inf():
    from fomo_nnunet.ssl.recipe import AMAES
    from fomo_nnunet.training.recipes import recipe_record

    assert math.isinf(AMAES.grad_clip) and recipe_record(AMAES)["grad_clip"] == "inf"


def _plans_of(kind: str) -> dict:
    task = next(t for t in TASKS_BY_NUMBER.values() if t.kind == kind)
    return {"plans_name": "fomoPlans", "dataset_name": f"Dataset9{task.key[-1]:0>2}_X", "fomo": {"task": task.key}}


@pytest.mark.parametrize("family, wrong_kinds", [
    ("nnUNetTrainerFomoCls", (REGRESSION, SEGMENTATION)), ("nnUNetTrainerFomoReg", (CLASSIFICATION, SEGMENTATION)),
    ("nnUNetTrainerFomoSeg", (CLASSIFICATION, REGRESSION))])
def test_every_trainer_refuses_a_task_of_another_kind_before_building_anything(family, wrong_kinds, capsys):
    """`-tr nnUNetTrainerFomoCls` on the brain-age dataset (a regression task) and the like stop in the trainer's
    constructor, before nnU-Net reads any folder, with exit code BAD_INPUT and the trainer to use."""
    from fomo_nnunet.trainer_checks import Refused

    members = [c for c in TRAINERS.values() if any(b.__name__ == family for b in c.__mro__)]
    assert members
    for cls in members:
        for kind in wrong_kinds:
            with pytest.raises(Refused) as e:
                cls(_plans_of(kind), "3d_fullres", 0, {})
            assert e.value.code == BAD_INPUT
            assert "use -tr nnUNetTrainerFomo" in capsys.readouterr().err
