"""Probe-ready embeddings: statistics of the embedding, stored in checkpoints and applied by Embedder.

The statistics of a real pretraining run (nnUNetTrainerFomoMAE's checkpoint_final) and the random-init
twin's are tested in tests/test_pretrain.py, on the run those tests share."""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import torch

from fomo_nnunet.models.embedding_stats import (STATS_KEY, EmbeddingStats, compute_embedding_stats, pooled_embedding,
                                         save_with_stats, select_cases)
from helpers import make_raw_dataset, run_cli, save_fake_pretraining


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_stats_round_trip_and_apply():
    vectors = [np.array([1.0, 10.0, 5.0]), np.array([3.0, 30.0, 5.0]), np.array([2.0, 20.0, 5.0])]
    stats = EmbeddingStats.from_vectors(vectors)
    assert stats.n_cases == 3 and stats.length == 3
    np.testing.assert_allclose(stats.mean, [2.0, 20.0, 5.0])
    np.testing.assert_allclose(stats.std, [np.sqrt(2 / 3), 10 * np.sqrt(2 / 3), 0.0])
    assert stats.dead.tolist() == [2]
    again = EmbeddingStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    np.testing.assert_array_equal(again.mean, stats.mean)
    np.testing.assert_array_equal(again.std, stats.std)
    assert again.n_cases == 3 and stats.to_dict()["what"].startswith("per-dimension mean/std")
    out = stats.apply(np.array([3.0, 30.0, 5.0 + 1e-7]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [1 / np.sqrt(2 / 3), 1 / np.sqrt(2 / 3), 0.0], rtol=1e-5)  # a dead dimension: 0
    normalised = np.stack([stats.apply(v) for v in vectors])
    np.testing.assert_allclose(normalised[:, :2].std(axis=0), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="length 2"):
        stats.apply(np.zeros(2))
    with pytest.raises(ValueError, match="lack"):
        EmbeddingStats.from_dict({"mean": [0.0]})
    with pytest.raises(ValueError, match="finite"):
        EmbeddingStats([0.0], [-1.0], 2)
    assert "1 of 3 dimensions dead" in stats.summary()


def test_case_selection_is_evenly_spaced_and_fixed():
    ids = [f"case{i:04d}" for i in range(1000)]
    chosen = select_cases(reversed(ids), 10)
    assert chosen == select_cases(ids, 10) and len(chosen) == 10
    assert chosen[0] == "case0000" and chosen[-1] == "case0999" and chosen == sorted(chosen)
    assert select_cases(ids[:5], 10) == ids[:5]


def _tiny_encoder():
    from fomo_nnunet.models.checkpoints import metadata_from_preset
    from fomo_nnunet.models.transfer import PretrainMetadata

    meta = PretrainMetadata.from_dict(metadata_from_preset("tiny"))
    torch.manual_seed(0)
    return meta.build_network(num_outputs=1).encoder, meta.patch_size


def test_statistics_standardise_the_vectors_they_were_computed_over():
    encoder, patch = _tiny_encoder()
    rng = np.random.default_rng(0)
    arrays = [rng.normal(0, 1, (1, 28 + i, 36, 30)).astype(np.float32) * (1 + i / 4) for i in range(8)]
    encoder.train()
    stats = compute_embedding_stats(encoder, iter(arrays), patch, progress=False)
    assert encoder.training  # the caller's mode is given back
    assert stats.n_cases == 8 and stats.length == 64 and stats.dead.size == 0
    encoder.eval()
    normalised = np.stack([stats.apply(pooled_embedding(encoder, a, patch)) for a in arrays])
    np.testing.assert_allclose(normalised.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(normalised.std(axis=0), 1, rtol=1e-3)
    with pytest.raises(ValueError, match="no scans"):
        compute_embedding_stats(encoder, [], patch, progress=False)


def test_a_checkpoint_without_stats_embeds_raw_one_with_them_standardised(tmp_path):
    from fomo_nnunet.challenge.inference import Embedder

    plain = save_fake_pretraining(tmp_path / "plain.pth")
    before = _sha(plain)
    raw = Embedder.load(plain)
    assert raw.stats is None and "raw" in raw.describe_scaling()
    data = np.random.default_rng(1).normal(0, 1, (1, 30, 34, 30)).astype(np.float32)
    np.testing.assert_array_equal(raw.embed_preprocessed(data), raw.raw_embedding(data))
    stats = EmbeddingStats(np.full(64, 0.5), np.full(64, 2.0), 7)
    save_with_stats(plain, stats, tmp_path / "with_stats.pth")
    assert _sha(plain) == before  # the input is left alone
    normalised = Embedder.load(tmp_path / "with_stats.pth")
    assert normalised.stats.n_cases == 7 and "7 pretraining cases" in normalised.describe_scaling()
    np.testing.assert_allclose(normalised.embed_preprocessed(data), (raw.raw_embedding(data) - 0.5) / 2.0, rtol=1e-6)
    save_with_stats(plain, EmbeddingStats(np.zeros(32), np.ones(32), 7), tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="32 long"):
        Embedder.load(tmp_path / "wrong.pth")


def test_cli_adds_statistics_to_a_copy_and_skips_unreadable_images(tmp_path, capsys):
    folder = make_raw_dataset(tmp_path / "raw", 991, "Stats", n_cases=4, seed=3)
    images = folder / "imagesTr"
    (images / "broken_0000.nii.gz").write_bytes(b"not a nifti")
    (tmp_path / "in").mkdir()
    ckpt = save_fake_pretraining(tmp_path / "in" / "checkpoint_final.pth")
    before = _sha(ckpt)
    out = tmp_path / "out" / "checkpoint_final.pth"
    code, stdout, stderr = run_cli(["embedding-stats", tmp_path / "in", "--images", images, "-o", out], capsys)
    assert code == 0, stderr
    assert "broken_0000.nii.gz" in stderr and "skipped" in stderr
    assert "over 4 cases" in stdout and f"wrote {out}" in stdout
    assert _sha(ckpt) == before
    stored = torch.load(out, map_location="cpu", weights_only=True)["fomo_metadata"][STATS_KEY]
    assert stored["n_cases"] == 4 and len(stored["mean"]) == 64
    code, stdout, _ = run_cli(["embed", "-i", images, "-o", tmp_path / "emb", "--checkpoint", out], capsys)
    assert "standardised per dimension" in stdout and code == 1  # the broken image failed, the others written
    code, stdout, _ = run_cli(["embed", "-i", images, "-o", tmp_path / "emb_raw", "--checkpoint", ckpt], capsys)
    assert "raw embeddings" in stdout and "pooling 'deepest'" in stdout
    # --pooling stages: the copy records the pooling beside statistics computed with it
    stages = tmp_path / "stages" / "checkpoint_final.pth"
    code, stdout, stderr = run_cli(["embedding-stats", ckpt, "--images", images, "--pooling", "stages", "-o", stages],
                                   capsys)
    assert code == 0 and "pooling 'stages'" in stdout, stderr
    stored = torch.load(stages, map_location="cpu", weights_only=True)["fomo_metadata"]
    assert stored["embedding_pooling"] == "stages" and len(stored[STATS_KEY]["mean"]) == 120
    code, stdout, _ = run_cli(["embed", "-i", images, "-o", tmp_path / "emb_stages", "--checkpoint", stages], capsys)
    assert "pooling 'stages'" in stdout and "length 120" in stdout
    assert np.load(tmp_path / "emb_stages" / "casetr000.npy").shape == (120,)
    assert re.search(r"^embedding_pooling +stages$", run_cli(["inspect", stages], capsys)[1], re.M)
    assert re.search(r"^embedding_pooling +deepest \(not recorded", run_cli(["inspect", ckpt], capsys)[1], re.M)
    assert run_cli(["embedding-stats", ckpt, "--images", images, "--pooling", "max", "-o", stages], capsys)[0] == 2
    # the input is only overwritten on request
    assert run_cli(["embedding-stats", ckpt, "--images", images], capsys)[0] == 2
    code, _, stderr = run_cli(["embedding-stats", ckpt, "--images", images, "-o", ckpt], capsys)
    assert code == 2 and "--in-place" in stderr
    code, _, stderr = run_cli(["embedding-stats", ckpt, "--images", images, "--in-place", "--max-cases", "2"], capsys)
    assert code == 2 and "1 usable image" in stderr  # the broken one and one good one were chosen
    assert _sha(ckpt) == before
    assert run_cli(["embedding-stats", ckpt, "--images", images, "--in-place", "--max-cases", "3"], capsys)[0] == 0
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["fomo_metadata"][STATS_KEY]["n_cases"] == 2
    code, _, stderr = run_cli(["embedding-stats", ckpt, "--images", tmp_path / "nothing", "-o", out], capsys)
    assert code == 2 and "nothing" in stderr


# ---- the embedding's pooling: "deepest" (the organisers' rule) or every encoder "stages" ----------
def test_deepest_pooling_is_the_previous_vector_and_stages_end_with_it():
    from fomo_nnunet.models.embedding_stats import POOLINGS, embedding_length
    from fomo_nnunet.image_level import crop_or_pad

    encoder, patch = _tiny_encoder()
    encoder.eval()
    data = np.random.default_rng(2).normal(0, 1, (1, 30, 38, 28)).astype(np.float32)
    with torch.no_grad():  # the vector as pooled_embedding computed it before poolings existed
        out = encoder(torch.from_numpy(crop_or_pad(data, patch)[None]).float())
    previous = out[-1].float().mean(dim=(2, 3, 4))[0].cpu().numpy().astype(np.float32)
    deepest = pooled_embedding(encoder, data, patch, pooling="deepest")
    assert deepest.dtype == np.float32 and np.array_equal(deepest, previous)
    assert np.array_equal(pooled_embedding(encoder, data, patch), previous)  # the default
    stages = pooled_embedding(encoder, data, patch, pooling="stages")
    assert stages.dtype == np.float32 and stages.shape == (8 + 16 + 32 + 64,)
    assert embedding_length(encoder, "stages") == 120 and embedding_length(encoder, "deepest") == 64
    assert np.array_equal(stages[-64:], deepest)  # shallow to deep: the deepest block last
    np.testing.assert_allclose(stages[:8], out[0].float().mean(dim=(2, 3, 4))[0].numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="'mean' is not one of 'deepest', 'stages'"):
        pooled_embedding(encoder, data, patch, pooling="mean")
    assert POOLINGS == ("deepest", "stages")
    encoder.return_skips = False  # the deepest stage only: "stages" cannot be computed
    np.testing.assert_array_equal(pooled_embedding(encoder, data, patch), previous)
    with pytest.raises(ValueError, match="return_skips"):
        pooled_embedding(encoder, data, patch, pooling="stages")


class _Described:
    """Just enough of a trainer for DescribedCheckpoints.fomo_metadata."""

    def __init__(self, pooling=None):
        from types import SimpleNamespace

        from fomo_nnunet.models.checkpoints import metadata_from_preset

        m = metadata_from_preset("tiny")
        self.configuration_manager = SimpleNamespace(
            network_arch_class_name=m["network_class"], network_arch_init_kwargs=m["network_kwargs"],
            network_arch_init_kwargs_req_import=m["arch_kwargs_requires_import"], patch_size=m["patch_size"],
            spacing=m["spacing"], normalization_schemes=m["normalization"], use_mask_for_norm=[True])
        self.plans_manager = SimpleNamespace(plans={"configurations": {"3d_fullres": {}}}, plans_name="P",
                                             dataset_name="D")
        self.configuration_name, self.batch_size, self.fomo_seed, self.num_input_channels = "3d_fullres", 2, 0, 1
        self.dataset_json, self.num_iterations_per_epoch = {"channel_names": {"0": "mri"}}, 1
        if pooling is not None:
            self.embedding_pooling = pooling


def test_the_pooling_is_recorded_in_the_metadata_and_embedder_follows_it(tmp_path):
    from fomo_nnunet.models.embedding_stats import POOLING_KEY
    from fomo_nnunet.challenge.inference import Embedder
    from fomo_nnunet.training import DescribedCheckpoints
    from fomo_nnunet.models.transfer import PretrainMetadata

    described = type("T", (_Described, DescribedCheckpoints), {"objective_settings": lambda self: {}})
    assert described().fomo_metadata(1)[POOLING_KEY] == "deepest"  # recorded even when it is the default
    meta = described("stages").fomo_metadata(1)
    assert meta[POOLING_KEY] == "stages"
    with pytest.raises(ValueError, match="embedding_pooling 'max'"):
        described("max").fomo_metadata(1)
    torch.manual_seed(0)
    net = PretrainMetadata.from_dict(meta).build_network(num_outputs=1)
    torch.save({"network_weights": net.state_dict(), "fomo_metadata": meta}, tmp_path / "stages.pth")
    embedder = Embedder.load(tmp_path / "stages.pth")
    assert embedder.pooling == "stages" and embedder.length == 120 and "pooling 'stages'" in embedder.describe_scaling()
    data = np.random.default_rng(3).normal(0, 1, (1, 30, 34, 30)).astype(np.float32)
    assert embedder.embed_preprocessed(data).shape == (120,)
    plain = Embedder.load(save_fake_pretraining(tmp_path / "plain.pth"))  # no key: every old checkpoint
    assert plain.pooling == "deepest" and plain.length == 64 and plain.with_pooling("stages").length == 120
    torch.save({"network_weights": net.state_dict(), "fomo_metadata": {**meta, POOLING_KEY: "max"}},
               tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth.*'max' is not one of"):
        Embedder.load(tmp_path / "bad.pth")


def test_embedder_refuses_statistics_of_another_pooling(tmp_path):
    from fomo_nnunet.models.embedding_stats import POOLING_KEY
    from fomo_nnunet.challenge.inference import Embedder

    plain = save_fake_pretraining(tmp_path / "plain.pth")
    save_with_stats(plain, EmbeddingStats(np.zeros(64), np.ones(64), 3), tmp_path / "wrong.pth", pooling="stages")
    assert torch.load(tmp_path / "wrong.pth", weights_only=True)["fomo_metadata"][POOLING_KEY] == "stages"
    with pytest.raises(ValueError, match=r"wrong\.pth: its embedding statistics are 64 long.*'stages' embedding"):
        Embedder.load(tmp_path / "wrong.pth")
    save_with_stats(plain, EmbeddingStats(np.zeros(120), np.ones(120), 3), tmp_path / "right.pth", pooling="stages")
    right = Embedder.load(tmp_path / "right.pth")
    assert right.pooling == "stages" and right.stats.length == 120
    assert right.with_pooling("deepest").stats is None  # statistics of one pooling never serve another
    save_with_stats(tmp_path / "right.pth", EmbeddingStats(np.zeros(120), np.ones(120), 4), tmp_path / "again.pth")
    assert Embedder.load(tmp_path / "again.pth").pooling == "stages"  # None: the checkpoint's own is kept
