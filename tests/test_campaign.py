"""`fomo-nnunet bench campaign`: the speed settings, the parts' bookkeeping, and the whole campaign at smoke size."""
from __future__ import annotations

import json
import os

import pytest
import torch

from fomo_nnunet.benchmarks.campaign import CHECKPOINT_LIMIT_BYTES, PARTS, format_report
from fomo_nnunet.benchmarks.step_bench import peak_bf16_tflops
from fomo_nnunet.benchmarks.step_bench import LOSS_TOLERANCE, loss_check
from fomo_nnunet.training.fast import Settings, StepSettings
from fomo_nnunet.training.loop import train_until
from helpers import run, run_cli


def test_peak_table_names_known_gpus_and_leaves_others_out():
    assert peak_bf16_tflops("NVIDIA H200") == pytest.approx(989.4)
    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)
    assert peak_bf16_tflops("NVIDIA H100 PCIe") == pytest.approx(756.0)  # not the SXM figure
    assert peak_bf16_tflops("NVIDIA H100 NVL") is None  # a variant we have no figure for: no share given
    assert peak_bf16_tflops("NVIDIA GeForce RTX 4090") is None


def test_loss_check_flags_a_curve_that_strays_or_breaks():
    ref = [1.0, 0.9, 0.8]
    assert loss_check([1.001, 0.905, 0.8], ref, 3)["within_tolerance"]
    strayed = loss_check([1.0, 0.9, 0.5], ref, 3)
    assert not strayed["within_tolerance"] and strayed["max_relative_difference"] == pytest.approx(0.375)
    assert loss_check([1.0, 0.9, 0.5], ref, 2)["within_tolerance"]  # only the first steps count
    assert not loss_check([1.0, float("nan")], ref, 2)["within_tolerance"]  # a NaN never passes
    assert strayed["tolerance"] == LOSS_TOLERANCE


class _Trainer:
    """What StepSettings wraps: nnU-Net's trainer reduced to the hooks it touches."""
    device = torch.device("cpu")

    def __init__(self):
        self.network = torch.nn.Conv3d(2, 4, 3)  # 1 channel: both layouts are one
        self.grad_scaler = "nnU-Net's scaler"

    def _do_i_compile(self):
        return "nnU-Net's choice"

    def configure_optimizers(self):
        return "optimiser"

    def train_step(self, batch):
        return {"autocast": torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None,
                "channels_last": batch["data"].is_contiguous(memory_format=torch.channels_last_3d)}


def test_step_settings_set_precision_layout_and_compile_around_the_trainers_own_step():
    class Fast(StepSettings, _Trainer):
        autocast_dtype, channels_last, compile_network = "bfloat16", True, None

    t = Fast()
    assert t.configure_optimizers() == "optimiser"
    assert t.grad_scaler is None  # bf16 needs no loss scaling
    assert t.network.weight.is_contiguous(memory_format=torch.channels_last_3d)
    out = t.train_step({"data": torch.zeros(1, 2, 4, 4, 4)})
    assert out == {"autocast": torch.bfloat16, "channels_last": True}
    assert t._do_i_compile() == "nnU-Net's choice"
    Fast.compile_network = False
    assert t._do_i_compile() is False

    class Default(StepSettings, _Trainer):
        pass

    d = Default()
    d.configure_optimizers()
    assert d.grad_scaler == "nnU-Net's scaler" and not d.network.weight.is_contiguous(
        memory_format=torch.channels_last_3d)
    assert d.train_step({"data": torch.zeros(1, 2, 4, 4, 4)}) == {"autocast": None, "channels_last": False}


def test_bad_step_settings_are_refused_naming_the_attribute():
    with pytest.raises(ValueError, match="autocast_dtype"):
        Settings("float8")

    class Bad(StepSettings, _Trainer):
        channels_last = "yes"

    with pytest.raises(ValueError, match="channels_last"):
        Bad().configure_optimizers()


class _LoopTrainer:
    """nnU-Net's training hooks, each epoch taking `epoch_seconds` on its own clock."""

    def __init__(self, epoch_seconds: float, num_epochs: int):
        self.epoch_seconds, self.num_epochs, self.now = epoch_seconds, num_epochs, 0.0
        self.current_epoch, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 0, 3, 1
        self.dataloader_train = self.dataloader_val = iter(range(10 ** 6))
        self.calls = []

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)
        return lambda *a: self.calls.append(hook)

    def train_step(self, batch):
        self.now += self.epoch_seconds / 3
        return {"loss": 1.0}

    def validation_step(self, batch):
        return {"loss": 1.0}

    def on_epoch_end(self):
        self.calls.append("on_epoch_end")
        self.current_epoch += 1


def test_train_until_stops_after_the_epoch_that_would_pass_the_limit_and_ends_the_run():
    t = _LoopTrainer(epoch_seconds=6, num_epochs=100)
    record = train_until(t, seconds=20, clock=lambda: t.now)
    assert record["epochs_done"] == 3 and record["steps_done"] == 9  # a 4th epoch would end past 20 s
    assert record["stopped_by"].startswith("the wall-clock limit")
    assert t.calls[0] == "on_train_start" and t.calls[-1] == "on_train_end"  # checkpoint_final is written
    short = _LoopTrainer(epoch_seconds=1, num_epochs=2)
    assert train_until(short, seconds=60, clock=lambda: short.now)["stopped_by"] == "the planned epochs"


def test_resenc_s_weights_fit_what_comes_back_from_a_lent_gpu():
    from fomo_nnunet.models.checkpoints import metadata_from_preset
    from fomo_nnunet.models.transfer import PretrainMetadata

    net = PretrainMetadata.from_dict(metadata_from_preset("resenc_s")).build_network(num_outputs=1)
    assert 4 * sum(p.numel() for p in net.parameters()) < CHECKPOINT_LIMIT_BYTES - 256 * 1024


def test_campaign_on_cuda_without_a_gpu_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(["bench", "campaign", "--out", tmp_path / "c", "--device", "cuda"], capsys)
    assert code == 2 and "--device cuda" in err and "--smoke" in err
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_campaign_smoke_on_cpu_runs_every_part_and_reports_it(tmp_path):
    out = tmp_path / "out"
    run(["fomo-nnunet", "bench", "campaign", "--out", str(out), "--device", "cpu", "--smoke"],
        {**os.environ, "OMP_NUM_THREADS": "2"}, timeout=900)
    r = json.loads((out / "campaign.json").read_text())
    assert set(r["parts"]) == set(PARTS)
    assert {k: v["status"] for k, v in r["parts"].items()} == {k: "done" for k in PARTS}
    assert r["environment"]["torch"] == torch.__version__ and "cudnn" in r["environment"]

    steps = {(f["trainer"], f["setting"]): f for f in r["parts"]["steps"]["figures"]}
    for trainer in ("nnUNetTrainerFomoMAE", "nnUNetTrainer"):
        ref, bf16 = steps[(trainer, "fp16 eager")], steps[(trainer, "bf16 eager")]
        assert ref["step_seconds"] > 0 and ref["tflop_per_step"] > 0 and ref["precision"].startswith("float32")
        assert bf16["precision"] == "bfloat16 autocast" and bf16["loss_check"]["within_tolerance"]
        assert bf16["tflop_per_step"] == ref["tflop_per_step"]  # the same network and batch
    assert steps[("nnUNetTrainerFomoMAE", "bf16 eager channels-last")]["loss_check"]["within_tolerance"]
    assert steps[("nnUNetTrainerFomoMAE", "fp16 compiled")]["status"].startswith("skipped on a CPU")

    entry = r["parts"]["entry"]["figures"]
    assert [f["task"] for f in entry] == ["2 task2"]
    e = entry[0]
    assert all(e[k] >= 0 for k in ("import_seconds", "model_load_seconds", "inference_seconds", "export_seconds"))
    assert e["process_seconds"] >= e["import_seconds"] + e["model_load_seconds"] + e["inference_seconds"]

    loader = r["parts"]["loader"]["figures"]
    assert loader[0]["workers"] == 1 and loader[0]["patches_per_second"] > 0

    pre = r["parts"]["pretrain"]
    assert pre["epochs_done"] >= 1 and pre["checkpoint"] == "pretrain_weights.pth"
    ckpt = out / "pretrain_weights.pth"
    assert ckpt.stat().st_size <= CHECKPOINT_LIMIT_BYTES
    from fomo_nnunet.models.transfer import load_checkpoint_safely

    c = load_checkpoint_safely(ckpt)
    assert c["fomo_metadata"]["objective"] == "mae" and "optimizer_state" not in c

    md = (out / "campaign.md").read_text()
    assert md == format_report(r)
    assert "| nnUNetTrainer | bf16 eager | bfloat16 autocast |" in md and "## pretrain: done" in md


def test_gaussian_warmed_beside_loading_is_the_one_nnunets_sliding_window_asks_for():
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    from fomo_nnunet.challenge.entry import warm_gaussian

    compute_gaussian.cache_clear()
    warm_gaussian([16, 24, 16], torch.device("cpu")).join()
    hits = compute_gaussian.cache_info().hits
    # the call in nnUNetPredictor._internal_predict_sliding_window_return_logits (nnU-Net 2.8), patch from the plans
    compute_gaussian(tuple([16, 24, 16]), sigma_scale=1. / 8, value_scaling_factor=10, device=torch.device("cpu"))
    assert compute_gaussian.cache_info().hits == hits + 1
    compute_gaussian.cache_clear()
