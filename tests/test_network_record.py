"""The bundle's record of how a model's network is built: prediction rebuilds exactly the trainer's
network from it (same parameter names and shapes), without nnU-Net's search for the trainer class."""
from __future__ import annotations

import json

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from fomo_nnunet.models.network_record import (IMAGE_LEVEL, PLANS, build_from_record, network_for_prediction,
                                        network_record, trainer_class)


def _shapes(net) -> dict:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("dataset, trainer, builder", [
    ("Dataset902_FOMO2Meningioma", "nnUNetTrainerFomoSeg_tiny", PLANS),
    ("Dataset903_FOMO3Brainage", "nnUNetTrainerFomoReg_tiny", IMAGE_LEVEL),
    ("Dataset901_FOMO1Infarct", "nnUNetTrainerFomoCls", IMAGE_LEVEL),
])
def test_record_rebuilds_the_trainers_network(tasks_ws, dataset, trainer, builder):
    root, _, _ = tasks_ws
    folder = root / "preprocessed" / dataset
    pm = PlansManager(json.loads((folder / "fomoPlans.json").read_text()))
    ds = json.loads((folder / "dataset.json").read_text())
    cm = pm.get_configuration("3d_fullres")
    n_in, n_out = len(ds["channel_names"]), pm.get_label_manager(ds).num_segmentation_heads
    cls = trainer_class(trainer)
    record = network_record(cls)
    assert record["builder"] == builder and json.loads(json.dumps(record)) == record  # plain data
    expected = cls.build_network_architecture(pm, cm, n_in, n_out, enable_deep_supervision=False)
    # the trainers' 3-D convolutions take oneDNN on a CPU at batch 1 (fomo_nnunet.models.cpu_convolution)
    assert {type(m).__name__ for m in expected.modules() if isinstance(m, torch.nn.Conv3d)} == {"OneDnnConv3d"}
    assert _shapes(build_from_record(record, pm, cm, n_in, n_out)) == _shapes(expected)
    # a checkpoint without the record falls back to the trainer class
    assert _shapes(network_for_prediction({"trainer_name": trainer}, pm, cm, n_in, n_out)) == _shapes(expected)


@pytest.mark.slow
def test_unknown_builder_is_refused(tasks_ws):
    with pytest.raises(ValueError, match="unknown network builder 'magic'"):
        build_from_record({"builder": "magic"}, None, None, 1, 1)


def test_a_trainer_that_builds_its_own_network_has_no_record_unless_it_names_its_builder():
    cls = trainer_class("nnUNetTrainerFomoSeg_tiny")

    class OwnNetwork(cls):
        @staticmethod
        def build_network_architecture(*args, **kwargs):
            raise AssertionError("not called")

    class OwnNetworkFromThePlans(OwnNetwork):
        fomo_network_builder = PLANS

        @staticmethod
        def build_network_architecture(*args, **kwargs):
            raise AssertionError("not called")

    assert network_record(OwnNetwork) is None  # only the class knows: prediction falls back to it
    assert network_record(OwnNetworkFromThePlans) == {"builder": PLANS}
    assert network_record(type("Inherits", (cls,), {})) == {"builder": PLANS}
