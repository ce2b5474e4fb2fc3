"""Probe-ready embeddings: statistics of the embedding, stored in checkpoints and applied by Embedder.

The statistics of a real pretraining run (nnUNetTrainerFomoMAE's checkpoint_final) and the random-init
twin's are tested in tests/test_pretrain.py, on the run those tests share."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from fomo_nnunet.cli import main
from fomo_nnunet.embedding_stats import (STATS_KEY, EmbeddingStats, compute_embedding_stats, pooled_embedding,
                                         save_with_stats, select_cases)
from helpers import make_raw_dataset, save_fake_pretraining


def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


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
    from fomo_nnunet.checkpoints import metadata_from_preset
    from fomo_nnunet.transfer import PretrainMetadata

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
    from fomo_nnunet.inference import Embedder

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
    assert "raw embeddings" in stdout
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
