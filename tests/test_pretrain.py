"""MAE pretraining through nnU-Net's own commands: plans, preprocessing, training, resume, pictures."""
from __future__ import annotations

import json
import math
import pydoc
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import PRETRAIN_DATASET as DATASET
from helpers import run

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainerFomoMAE_tiny_smoke"


@pytest.fixture(scope="module")
def pretrain_ws(pretrain_corpus):
    root, env = pretrain_corpus
    run(["nnUNetv2_train", str(DATASET), "3d_fullres", "all", "-p", "fomoPretrainPlans", "-tr", TRAINER,
         "-device", "cpu"], env)
    fold = root / "results" / f"Dataset{DATASET}_Corpus" / f"{TRAINER}__fomoPretrainPlans__3d_fullres" / "fold_all"
    return root, env, fold


def test_pretrain_plans_name_only_classes_nnunet_resolves(pretrain_ws):
    root, _, _ = pretrain_ws
    plans = json.loads((root / "preprocessed" / f"Dataset{DATASET}_Corpus" / "fomoPretrainPlans.json").read_text())
    c = plans["configurations"]["3d_fullres"]
    assert c["preprocessor_name"] == "DefaultPreprocessor"
    assert c["normalization_schemes"] == ["ZScoreNormalization"]
    arch = c["architecture"]
    assert pydoc.locate(arch["network_class_name"]) is not None
    for key in arch["_kw_requires_import"]:
        if arch["arch_kwargs"][key] is not None:
            assert pydoc.locate(arch["arch_kwargs"][key]) is not None, key
    assert c["patch_size"] == [32, 32, 32] and c["spacing"] == [4.0, 4.0, 4.0]
    assert arch["arch_kwargs"]["features_per_stage"] == [8, 16, 32, 64]


def test_trainer_found_by_name_and_reconstruction_loss_goes_down(pretrain_ws):
    _, _, fold = pretrain_ws
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == TRAINER
    losses = ckpt["logging"]["train_losses"]
    val = ckpt["logging"]["val_losses"]
    assert len(losses) == 3
    assert losses[-1] < losses[0] and val[-1] < val[0]


def test_checkpoint_metadata_round_trips_through_inspect(pretrain_ws):
    _, env, fold = pretrain_ws
    out = run(["fomo-nnunet", "inspect", str(fold.parent), "--json"], env).stdout
    meta = json.loads(out)
    from fomo_nnunet.models.transfer import PretrainMetadata, load_checkpoint_safely

    stored = load_checkpoint_safely(fold / "checkpoint_final.pth")["fomo_metadata"]
    assert meta == stored
    m = PretrainMetadata.from_dict(meta)
    assert m.objective == "mae" and m.objective_settings["mask_ratio"] == 0.75
    assert m.objective_settings["block_size"] == 4
    assert m.objective_settings["decoder_skips"] == "all" and m.objective_settings["vicreg_weight"] == 0.0
    assert "vicreg" not in m.objective_settings
    assert m.patch_size == [32, 32, 32] and m.spacing == [4.0, 4.0, 4.0] and m.num_input_channels == 1
    assert m.epochs_trained == 3 and m.iterations_trained == 12
    net = m.build_network(num_outputs=1)
    net.load_state_dict({k: v for k, v in load_checkpoint_safely(fold / "checkpoint_final.pth")
                         ["network_weights"].items()})


def _assert_picture(path):
    """A PNG that decodes, of a real size, with something drawn on it (not a blank canvas)."""
    from matplotlib import image

    px = image.imread(path)
    assert px.ndim == 3 and min(px.shape[:2]) >= 100, (path, px.shape)
    assert px[..., :3].std() > 0.01, f"{path} is blank"


def test_pictures_are_written(pretrain_ws):
    _, _, fold = pretrain_ws
    _assert_picture(fold / "progress.png")
    _assert_picture(fold / "reconstruction.png")
    assert sorted(p.name for p in (fold / "reconstructions").glob("*.png")) == \
        ["epoch_0001.png", "epoch_0002.png", "epoch_0003.png"]


def test_resume_with_c_continues_from_saved_epoch(pretrain_ws, tmp_path):
    root, env, fold = pretrain_ws
    results = tmp_path / "results"
    shutil.copytree(root / "results", results)
    env = {**env, "nnUNet_results": str(results)}
    copy = results / fold.relative_to(root / "results")
    # as if killed during the last epoch: a checkpoint_latest after epoch 2 of 3, no final
    ckpt = torch.load(copy / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    ckpt["current_epoch"] = 2
    ckpt["logging"] = {k: v[:2] for k, v in ckpt["logging"].items()}
    (copy / "checkpoint_final.pth").unlink()
    torch.save(ckpt, copy / "checkpoint_latest.pth")
    for log in copy.glob("training_log_*.txt"):
        log.unlink()
    run(["nnUNetv2_train", str(DATASET), "3d_fullres", "all", "-p", "fomoPretrainPlans", "-tr", TRAINER,
         "-device", "cpu", "--c"], env)
    log = "".join(p.read_text() for p in copy.glob("training_log_*.txt"))
    assert re.findall(r"Epoch (\d+) *\n", log) == ["2"]
    final = torch.load(copy / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 3 and len(final["logging"]["train_losses"]) == 3


def test_bench_reports_both_pipelines(pretrain_ws, monkeypatch):
    root, env, _ = pretrain_ws
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnUNet_n_proc_DA"):
        monkeypatch.setenv(k, env[k])
    from fomo_nnunet.benchmarks.throughput import bench_pretrain, format_report

    r = bench_pretrain(DATASET, "fomoPretrainPlans", mae_trainer=TRAINER, steps=2, warmup=1, loader_batches=2)
    assert r["mae"]["trainer"] == TRAINER and r["baseline"]["trainer"] == "nnUNetTrainer"
    assert r["mae"]["patch_size"] == r["baseline"]["patch_size"] == [32, 32, 32]
    assert r["step_ratio_mae_over_baseline"] > 0 and r["mae"]["loader_samples_per_second"] > 0
    assert "MAE step / nnU-Net step" in format_report(r)


HYBRID = "nnUNetTrainerFomoMAE_tiny_noskip_vicreg_smoke"


def _pretrain_smoke(trainer: str, pretrain_corpus, tmp_path):
    """Train `trainer` through nnU-Net's command in a fresh results folder: (fold folder, checkpoint_final,
    its PretrainMetadata)."""
    from fomo_nnunet.models.transfer import PretrainMetadata, load_checkpoint_safely

    root, env = pretrain_corpus
    env = {**env, "nnUNet_results": str(tmp_path / "results")}
    run(["nnUNetv2_train", str(DATASET), "3d_fullres", "all", "-p", "fomoPretrainPlans", "-tr", trainer,
         "-device", "cpu"], env)
    fold = tmp_path / "results" / f"Dataset{DATASET}_Corpus" / f"{trainer}__fomoPretrainPlans__3d_fullres" / "fold_all"
    ckpt = load_checkpoint_safely(fold / "checkpoint_final.pth")
    return fold, ckpt, PretrainMetadata.from_dict(ckpt["fomo_metadata"])


def test_noskip_vicreg_pretraining_records_its_objective_and_loads_downstream(pretrain_corpus, tmp_path):
    """The hybrid objective end to end: skips off, two views, VICReg logged per epoch beside the
    reconstruction loss, the settings in the checkpoint, and the weights load as any pretraining's."""
    from fomo_nnunet.models.transfer import transfer_from_checkpoint

    fold, ckpt, m = _pretrain_smoke(HYBRID, pretrain_corpus, tmp_path)
    settings = m.objective_settings
    assert m.objective == "mae+vicreg" and m.trainer_name == HYBRID
    assert settings["decoder_skips"] == "none" and settings["vicreg_weight"] > 0 and settings["skip_drop_p"] == 0.5
    assert settings["vicreg"]["invariance"] == 25.0 and settings["vicreg"]["covariance"] == 1.0
    logging = ckpt["logging"]
    for key in ("train_losses", "val_losses", "vicreg_losses", "vicreg_variance"):
        assert len(logging[key]) == 3 and all(math.isfinite(v) for v in logging[key]), key
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    epochs = [line for line in log.splitlines() if "vicreg (x " in line]
    assert len(epochs) == 3 and log.count("train_loss") == 3 and all(" variance " in line for line in epochs)
    assert "VICReg on 64 features at 2 samples per branch" in log  # the bottleneck's pool: the hinge floor
    # the VICReg terms per epoch in the metadata too: the variance hinge shows whether the features collapse
    history = settings["vicreg"]["history"]
    assert history["epochs"] == 3 and history["variance_max"] == 2.0
    for name, key in (("loss", "vicreg_losses"), ("invariance", "vicreg_invariance"),
                      ("variance", "vicreg_variance"), ("covariance", "vicreg_covariance")):
        assert history["per_epoch"][name] == pytest.approx(logging[key]), name
    assert all(0 <= v <= 2.0 for v in history["per_epoch"]["variance"])
    net = m.build_network(num_outputs=1)
    net.load_state_dict(ckpt["network_weights"])  # the same network and state dict as plain MAE
    downstream = m.build_network(num_outputs=3, input_channels=2)  # a 2-channel, 3-class segmentation
    report = transfer_from_checkpoint(downstream, fold / "checkpoint_final.pth")
    assert report.n_loaded > 0 and report.n_adapted == 1  # the 1-channel stem spread over 2 channels
    assert all(name.startswith("decoder.seg_layers.") for name in report.fresh)  # only the output layers


ALONE = "nnUNetTrainerFomoMAE_tiny_vicreg_alone_stages_expander_smoke"


def test_vicreg_alone_with_an_expander_trains_without_reconstruction_records_it_and_loads_downstream(
        pretrain_corpus, tmp_path):
    """mae_weight 0 with an expander on every stage's pool, through nnU-Net's command: the objective is named
    "vicreg", stages, weights and expander are in the metadata with both variance hinges per epoch (after the
    expander, and of the pools themselves), the log names the unweighted reconstruction loss; the expander is
    saved with the network and left behind by downstream loading and embedding."""
    from fomo_nnunet.challenge.inference import Embedder
    from fomo_nnunet.models.transfer import transfer_from_checkpoint

    fold, ckpt, m = _pretrain_smoke(ALONE, pretrain_corpus, tmp_path)
    settings = m.objective_settings
    assert m.objective == "vicreg" and settings["mae_weight"] == 0.0 and settings["vicreg_weight"] == 1.0
    assert settings["vicreg"]["stages"] == "all" and settings["vicreg"]["expander"] == [16, 8]
    assert ckpt["fomo_metadata"]["embedding_pooling"] == "stages"
    history = settings["vicreg"]["history"]["per_epoch"]
    for name in ("variance", "feature_variance"):
        assert history[name] == pytest.approx(ckpt["logging"]["vicreg_" + name]) and len(history[name]) == 3
        assert all(0 <= v <= 2.0 for v in history[name])
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert log.count("train_loss (reconstruction, x 0.0)") == 3 and log.count("vicreg (x 1.0)") == 3
    assert log.count(" feature variance ") == 3
    assert "VICReg on 8 features at 2 samples per branch: its covariance term alone keeps the variance hinge" in log
    assert ckpt["network_weights"]["fomo_vicreg_expander.3.weight"].shape == (8, 16)
    report = transfer_from_checkpoint(m.build_network(num_outputs=2), fold / "checkpoint_final.pth")
    assert report.n_loaded > 0 and not any("expander" in name for name in report.loaded)
    assert Embedder.load(str(fold / "checkpoint_final.pth")).pooling == "stages"


AMAES = "nnUNetTrainerFomoMAE_tiny_amaes_smoke"


def test_amaes_smoke_trains_through_nnunet_and_records_the_recipe(pretrain_corpus, tmp_path):
    """The organisers' recipe through nnU-Net's command: its settings in the checkpoint metadata and in the
    optimiser nnU-Net saved, the loss logged over every voxel."""
    fold, ckpt, m = _pretrain_smoke(AMAES, pretrain_corpus, tmp_path)
    assert m.objective == "mae" and m.trainer_name == AMAES and m.epochs_trained == 3
    assert ckpt["fomo_metadata"]["embedding_pooling"] == "deepest"  # the deepest stage's pool, not ours
    settings = m.objective_settings
    assert {k: settings[k] for k in ("block_size", "mask_ratio", "loss", "loss_region", "lr", "weight_decay",
                                     "adamw_betas", "warmup_fraction", "grad_clip", "decoder_skips")} == {
        "block_size": 4, "mask_ratio": 0.6, "loss": "mse", "loss_region": "every voxel of the patch, masked or visible",
        "lr": 1e-4, "weight_decay": 3e-5, "adamw_betas": [0.9, 0.98], "warmup_fraction": 0.02, "grad_clip": None,
        "decoder_skips": "none"}
    group = ckpt["optimizer_state"]["param_groups"][0]
    assert group["initial_lr"] == 1e-4 and group["weight_decay"] == 3e-5 and tuple(group["betas"]) == (0.9, 0.98)
    assert all(math.isfinite(v) for v in ckpt["logging"]["train_losses"] + ckpt["logging"]["val_losses"])
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert log.count("val_loss (every voxel of the patch") == 3


SESSIONS = "nnUNetTrainerFomoMAE_tiny_noskip_vicreg_sessions_smoke"


def test_session_pair_pretraining_reads_the_session_list_that_planning_copies(pretrain_corpus, tmp_path):
    """`plan pretrain` copies subjects.json beside the plans; the session-pair hybrid trains from it (in an
    augmentation worker) and records its pairs in the checkpoint."""
    from fomo_nnunet.models.transfer import PretrainMetadata, load_checkpoint_safely

    root, env = pretrain_corpus
    name = f"Dataset{DATASET}_Corpus"
    for kind in ("raw", "preprocessed"):  # copies: this test adds a session list to both
        shutil.copytree(root / kind / name, tmp_path / kind / name)
    env = {**env, "nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "preprocessed"),
           "nnUNet_results": str(tmp_path / "results")}
    subjects = {"A/sub-01/ses-01": {"scans": {"casetr000": "t1w", "casetr001": "flair"}},
                "A/sub-02/ses-01": {"scans": {"casetr002": "t1w", "casetr003": "t2w", "casetr004": "flair"}},
                "B/sub-01/ses-01": {"scans": {"casetr005": "t1w"}}}
    (tmp_path / "raw" / name / "subjects.json").write_text(json.dumps(subjects))
    run(["fomo-nnunet", "plan", "pretrain", "-d", str(DATASET), "--arch", "tiny", "-np", "1"], env)
    assert json.loads((tmp_path / "preprocessed" / name / "subjects.json").read_text()) == subjects
    run(["nnUNetv2_train", str(DATASET), "3d_fullres", "all", "-p", "fomoPretrainPlans", "-tr", SESSIONS,
         "-device", "cpu"], env)
    fold = tmp_path / "results" / name / f"{SESSIONS}__fomoPretrainPlans__3d_fullres" / "fold_all"
    ckpt = load_checkpoint_safely(fold / "checkpoint_final.pth")
    vicreg = PretrainMetadata.from_dict(ckpt["fomo_metadata"]).objective_settings["vicreg"]
    assert vicreg["pairs"] == "sessions" and vicreg["session_p_other"] == 0.5
    assert all(math.isfinite(v) for v in ckpt["logging"]["vicreg_losses"]) and len(ckpt["logging"]["vicreg_losses"]) == 3
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "session pairs: 5 of 6 training cases have another sequence of their session" in log


# ---- probe-ready embeddings: statistics over the pretraining corpus in checkpoint_final ------------
@pytest.fixture(scope="module")
def corpus_embeddings(pretrain_ws):
    """The pretraining corpus' scans embedded by checkpoint_final, as `fomo-nnunet embed` does (NIfTI in)."""
    from fomo_nnunet.challenge.inference import Embedder

    root, _, fold = pretrain_ws
    embedder = Embedder.load(fold / "checkpoint_final.pth")
    files = sorted((root / "raw" / f"Dataset{DATASET}_Corpus" / "imagesTr").glob("*.nii.gz"))
    return embedder, np.stack([embedder.embed_file(str(f)) for f in files])


def test_final_checkpoint_standardises_the_corpus_embeddings(pretrain_ws, corpus_embeddings):
    from fomo_nnunet.models.embedding_stats import STATS_KEY
    from fomo_nnunet.models.transfer import load_checkpoint_safely

    _, _, fold = pretrain_ws
    stored = load_checkpoint_safely(fold / "checkpoint_final.pth")["fomo_metadata"]
    # our recipes pool every stage: 8 + 16 + 32 + 64 values for the tiny network
    assert stored["embedding_pooling"] == "stages"
    assert stored[STATS_KEY]["n_cases"] == 6 and len(stored[STATS_KEY]["std"]) == 120
    assert "every stage pooled" in stored[STATS_KEY]["what"]
    # checkpoint_best was written before the end, with other weights: it carries none
    best = load_checkpoint_safely(fold / "checkpoint_best.pth")["fomo_metadata"]
    assert STATS_KEY not in best
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert re.search(r"embedding statistics over 6 cases: median std \S+, \d+ of 120 dimensions dead", log)
    embedder, vectors = corpus_embeddings
    assert embedder.stats is not None and vectors.shape == (6, 120)
    alive = np.setdiff1d(np.arange(120), embedder.stats.dead)
    std = vectors[:, alive].std(axis=0)
    assert np.all((std >= 0.5) & (std <= 2)), std  # raw, the tiny encoder's dimensions have std ~1e-2


def test_fomo_lp_sgd_probe_trains_on_the_standardised_embeddings(corpus_embeddings):
    from fomo_nnunet.evaluation.probe import train_sgd_heads

    _, X = corpus_embeddings
    y = np.array([0, 1, 0, 1, 0, 1])
    predict, info = train_sgd_heads(X[:4], y[:4], X[4:], y[4:], 2, learning_rates=(1e-3, 1e-2, 1e-1))
    assert np.all(np.isfinite(predict(X))) and np.all(np.isfinite(list(info["val_auroc"].values())))


def test_random_init_twin_gets_its_own_statistics_over_the_same_corpus(pretrain_ws, corpus_embeddings, tmp_path):
    from fomo_nnunet.benchmarks.fomo_synth import save_random_init
    from fomo_nnunet.challenge.inference import Embedder

    root, _, fold = pretrain_ws
    corpus = root / "preprocessed" / f"Dataset{DATASET}_Corpus" / "fomoPretrainPlans_3d_fullres"
    save_random_init(str(fold / "checkpoint_final.pth"), tmp_path / "random.pth", 0, corpus)
    twin = Embedder.load(tmp_path / "random.pth")
    pretrained = corpus_embeddings[0].stats
    assert twin.stats.n_cases == pretrained.n_cases == 6
    assert not np.allclose(twin.stats.mean, pretrained.mean, rtol=0.1)
    save_random_init(str(fold / "checkpoint_final.pth"), tmp_path / "bare.pth", 0)
    assert Embedder.load(tmp_path / "bare.pth").stats is None  # never the pretrained statistics
    # a pretrained checkpoint without statistics (an older run): both arms stay raw
    from fomo_nnunet.models.embedding_stats import STATS_KEY
    from fomo_nnunet.models.transfer import load_checkpoint_safely

    old = load_checkpoint_safely(fold / "checkpoint_final.pth")
    old["fomo_metadata"].pop(STATS_KEY)
    torch.save(old, tmp_path / "old.pth")
    save_random_init(str(tmp_path / "old.pth"), tmp_path / "old_twin.pth", 0, corpus)
    assert Embedder.load(tmp_path / "old_twin.pth").stats is None
