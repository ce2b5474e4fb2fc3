"""The trainer toolkit (fomo_nnunet.training) on its own: schedule, training step, epoch end, unwrapping."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fomo_nnunet.training import COSINE, AmpStep, EpochEnd, EpochLR, EpochSchedule, unwrap


def test_poly_schedule_holds_pretrained_groups_then_warms_up_then_decays():
    s = EpochSchedule(10, warmup_epochs=2, fresh_only_epochs=3)
    assert [s.factor(e) for e in range(3)] == [1 / 3, 2 / 3, (1 - 2 / 10) ** 0.9]
    assert [s.factor(e, pretrained=True) for e in range(6)] == [0.0, 0.0, 0.0, 1 / 3, 2 / 3, (1 - 5 / 10) ** 0.9]
    assert s.factor(9) == pytest.approx(0.1 ** 0.9)


def test_cosine_schedule_warms_up_then_falls_to_its_final_factor():
    s = EpochSchedule(12, warmup_epochs=2, decay=COSINE, final_factor=0.1)
    assert s.factor(0) == 1 / 3 and s.factor(2) == 1.0
    assert s.factor(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s.factor(12) == pytest.approx(0.1) and s.factor(40) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown decay"):
        EpochSchedule(10, decay="step")


def test_epoch_lr_scales_each_group_from_its_own_base_lr():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.5, "pretrained": True}], lr=1.0)
    lr = EpochLR(opt, EpochSchedule(4, warmup_epochs=1, fresh_only_epochs=1))
    lr.step(0)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.0]
    lr.step(1)
    assert [g["lr"] for g in opt.param_groups] == [(1 - 1 / 4) ** 0.9, 0.25]


class _Step(AmpStep):
    def __init__(self, net, grad_clip):
        self.network, self.device, self.grad_scaler, self.grad_clip = net, torch.device("cpu"), None, grad_clip
        self.optimizer = torch.optim.SGD(net.parameters(), lr=1.0)

    def training_loss(self, batch):
        with self.autocast():
            return (self.network(batch["data"]) * 100).sum()


@pytest.mark.parametrize("clip", [0.5, 12.0])
def test_training_step_clips_the_gradient_norm_at_the_class_attribute(clip):
    net = torch.nn.Linear(3, 1, bias=False)
    before = net.weight.detach().clone()
    out = _Step(net, clip).train_step({"data": torch.ones(2, 3)})
    assert isinstance(out["loss"], np.ndarray)
    assert float(torch.linalg.vector_norm(net.weight.detach() - before)) == pytest.approx(clip, rel=1e-5)


@pytest.mark.slow
def test_unwrap_reaches_the_module_inside_compile_and_data_parallel_wrappers():
    net = torch.nn.Linear(2, 2)
    assert unwrap(torch.nn.DataParallel(torch.compile(net))) is net
    assert unwrap(net) is net


class _Epochs(EpochEnd):
    """An EpochEnd with nnU-Net's attributes faked: records what it would print and save."""

    def __init__(self, values, best_is_lowest):
        self.best_is_lowest, self._values, self._best_ema = best_is_lowest, values, None
        self.current_epoch, self.num_epochs, self.save_every, self.local_rank = 0, len(values), 2, 0
        self.output_folder, self.printed, self.saved, self.drawn = "out", [], [], []
        logged = {"epoch_start_timestamps": [0.0] * len(values), "epoch_end_timestamps": []}
        self.logger = SimpleNamespace(log=lambda k, v, e: logged[k].append(v),
                                      get_value=lambda k, step: logged[k][step])

    def epoch_lines(self):
        return [("value", self._values[self.current_epoch])]

    def selection(self):
        v = self._values[self.current_epoch]
        return v, f"best {v}"

    def write_pictures(self, epoch):
        self.drawn.append(epoch)

    def print_to_log_file(self, *args):
        self.printed.append(args)

    def save_checkpoint(self, filename):
        self.saved.append((self.current_epoch, filename.split("/")[-1]))


@pytest.mark.parametrize("lowest,best_epochs", [(True, [0, 2]), (False, [0, 1, 4])])
def test_epoch_end_saves_latest_and_best_and_draws_every_epoch(lowest, best_epochs):
    t = _Epochs([3.0, 4.0, 1.0, float("nan"), 5.0], lowest)
    for _ in range(5):
        t.on_epoch_end()
    assert t.current_epoch == 5 and t.drawn == [0, 1, 2, 3, 4]
    assert [e for e, f in t.saved if f == "checkpoint_latest.pth"] == [1, 3]  # every 2nd epoch, not after the last
    best = [e for e, f in t.saved if f == "checkpoint_best.pth"]
    assert best == best_epochs  # a NaN is never a new best
    assert ("value", 3.0) in t.printed and any(str(a[0]).startswith("Epoch time") for a in t.printed)


def test_progress_plot_is_drawn_every_nth_epoch_and_after_the_last(monkeypatch, tmp_path):
    import fomo_nnunet.training.epochs as epochs

    drawn = []
    monkeypatch.setattr(epochs, "plot_curves", lambda path, *a, **k: drawn.append(run.current_epoch))

    class Run(epochs.EpochEnd):
        progress_plot_every = 5
        num_epochs = 12
        output_folder = str(tmp_path)
        logger = type("Log", (), {"get_value": staticmethod(lambda key, step: [1.0, 2.0])})()

    run = Run()
    for epoch in range(12):
        run.current_epoch = epoch
        run.plot_losses("t", {"lr": "lrs"}, "lr")
    assert drawn == [4, 9, 11]
    run.progress_plot_every, drawn[:] = 1, []
    for epoch in range(3):
        run.current_epoch = epoch
        run.plot_losses("t", {}, "")
    assert drawn == [0, 1, 2]
