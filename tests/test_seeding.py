"""One seed per run: same seed -> the same losses, weights and predictions; another seed -> different."""
from __future__ import annotations

import json
import random
import sys

import numpy as np
import pytest
import torch

from helpers import run

from fomo_nnunet.seeding import BatchSeededLoader, derive_seed, run_seed
from fomo_nnunet.models.transfer import load_checkpoint_safely

MENINGIOMA = 902
SMOKE = "nnUNetTrainerFomoSeg_tiny_smoke"


def test_run_seed_reads_the_environment_and_rejects_nonsense():
    assert run_seed({}) == 0
    assert run_seed({"FOMO_SEED": " 17 "}) == 17
    for bad in ("abc", "-1", "1.5", str(2**32)):
        with pytest.raises(ValueError, match="FOMO_SEED"):
            run_seed({"FOMO_SEED": bad})


def test_derived_seeds_are_stable_and_distinct_per_stream_and_index():
    assert derive_seed(3, "mask", 0) == derive_seed(3, "mask", 0)
    seeds = {derive_seed(s, stream, i) for s in (0, 1) for stream in ("mask", "init") for i in (0, 1)}
    assert len(seeds) == 8
    # a fixed value: derived seeds must not change between versions, or old runs stop being repeatable
    assert derive_seed(0, "init") == int(np.random.SeedSequence([0, 3329549428]).generate_state(1)[0])


class _Loader:
    """A stand-in for nnU-Net's loader: a batch is a draw from numpy, torch and `random`."""
    thread = None

    def set_thread_id(self, i):
        self.thread = i

    def __next__(self):
        return np.random.rand(), float(torch.rand(1)), random.random()


def test_a_batch_is_a_function_of_its_number_in_any_worker():
    one = BatchSeededLoader(_Loader(), 3, "batch_tr")
    alone = [next(one) for _ in range(6)]
    assert len(set(alone)) == 6
    # two workers read round-robin: worker 0 draws batches 0, 2, 4 and worker 1 draws 1, 3, 5
    workers = [BatchSeededLoader(_Loader(), 3, "batch_tr", num_workers=2) for _ in range(2)]
    for i, w in enumerate(workers):
        w.set_thread_id(i)
        assert w._loader.thread == i
    assert [next(workers[j % 2]) for j in range(6)] == alone
    # a stream restarted at batch 4 (a resumed run) continues it
    restarted = BatchSeededLoader(_Loader(), 3, "batch_tr", start=4)
    assert [next(restarted), next(restarted)] == alone[4:]
    assert next(BatchSeededLoader(_Loader(), 3, "batch_tr", rank=1)) != alone[0]
    assert next(BatchSeededLoader(_Loader(), 3, "batch_val")) != alone[0]
    loader = workers[0]
    loader.was_initialized = False  # the augmenter resets flags on the loader it was given: reach the real one
    assert loader._loader.was_initialized is False


def test_in_process_batches_leave_the_processs_own_random_state_alone():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = random.random(), np.random.rand(), float(torch.rand(1))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    loader = BatchSeededLoader(_Loader(), 3, "batch_tr", isolated=True)
    next(loader), next(loader)
    assert (random.random(), np.random.rand(), float(torch.rand(1))) == expected


# nnUNetv2_train's path for one CPU process (run_training_entry -> run_training), without the final validation,
# which spawns two worker pools (slow) and shows nothing about seeding; then nnU-Net's predictor on the
# test images, one process, no pools. One process per run, as a user's runs are.
TRAIN_AND_PREDICT = """
import sys, torch
from nnunetv2.run.run_training import get_trainer_from_args
dataset, trainer, images, out = sys.argv[1:5]
torch.set_num_threads(1)  # bit for bit holds single-threaded (docs/reproducibility.md); 2 threads under load differed
t = get_trainer_from_args(dataset, "3d_fullres", 0, trainer, "fomoPlans", device=torch.device("cpu"))
t.run_training()
if images:
    import os
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    p = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"),
                        allow_tqdm=False)
    p.initialize_from_trained_model_folder(t.output_folder_base, use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    os.makedirs(out)
    p.predict_from_files_sequential(images, out, save_probabilities=True)
"""


def _train_and_predict(ws, tmp_path, tag: str, seed: int, workers: int, predict: bool = True):
    """Train (and if `predict`, predict the test images) in a process of its own, into its own results folder."""
    root, env, _ = ws
    results = tmp_path / f"results_{tag}"
    env = {**env, "nnUNet_results": str(results), "FOMO_SEED": str(seed), "nnUNet_n_proc_DA": str(workers)}
    images = root / "raw" / "Dataset902_FOMO2Meningioma" / "imagesTs"
    out = tmp_path / f"pred_{tag}"
    run([sys.executable, "-c", TRAIN_AND_PREDICT, str(MENINGIOMA), SMOKE, str(images) if predict else "", str(out)],
        env)
    fold = results / "Dataset902_FOMO2Meningioma" / f"{SMOKE}__fomoPlans__3d_fullres" / "fold_0"
    ckpt = load_checkpoint_safely(fold / "checkpoint_final.pth")
    return {"losses": ckpt["logging"]["train_losses"], "weights": ckpt["network_weights"],
            "probabilities": [np.load(f)["probabilities"] for f in sorted(out.glob("*.npz"))],
            "seed_file": json.loads((fold / "seed.json").read_text()), "init_args": ckpt["init_args"]}


def _same(a: dict, b: dict) -> bool:
    return (a["losses"] == b["losses"]
            and all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
            and all(np.array_equal(x, y) for x, y in zip(a["probabilities"], b["probabilities"])))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_gives_identical_losses_weights_and_predictions(tasks_ws, tmp_path, workers):
    # prediction uses no augmentation workers: identical weights give identical predictions, which the
    # workers=0 case proves with nnU-Net's predictor; with workers the runs compare losses and weights
    predict = workers == 0
    a = _train_and_predict(tasks_ws, tmp_path, "a", 5, workers, predict)
    b = _train_and_predict(tasks_ws, tmp_path, "b", 5, workers, predict)
    assert len(a["losses"]) == 2 and len(a["probabilities"]) == (2 if predict else 0)
    assert _same(a, b)
    assert a["seed_file"]["seed"] == 5 and a["seed_file"]["augmentation_workers"] == workers
    assert a["init_args"]["fomo_seed"] == 5
    if workers == 0:
        c = _train_and_predict(tasks_ws, tmp_path, "c", 6, workers, predict=False)
        assert c["losses"] != a["losses"]
        assert not _same(a, c)
