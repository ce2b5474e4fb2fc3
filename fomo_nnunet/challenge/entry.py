"""`fomo-nnunet fomo26 TASK --flair ... --output PATH`: one challenge case in, one valid output out.

Reads the task's inputs (argument names from the task table), resamples every channel onto the
reference channel's grid (the task's first channel), runs the bundled model (all its folds,
ensembled) and writes the output as the official validator requires, atomically. Errors in the
inputs are one line on stderr naming the argument, with a non-zero exit and no output file.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from fomo_nnunet.challenge.bundle import check_model_files, load_manifest, loading_model, model_entry
from fomo_nnunet.challenge.entry_io import (OutputFile, check_fields_of_view, check_output_target, orthogonal_affine,
                                   read_input, read_input_header, resample_onto, select_inputs, unused_arguments,
                                   write_embedding_npy, write_label_nifti, write_value_txt)
from fomo_nnunet.tasks import (CLASSIFICATION, EMBEDDING, OUT_EMBEDDING_NPY, OUT_LABEL_NIFTI, OUT_PROBABILITY_TXT,
                               REGRESSION, SEGMENTATION, Task)

OUTPUT_SUFFIX = {OUT_PROBABILITY_TXT: (".txt",), "txt_value": (".txt",), OUT_LABEL_NIFTI: (".nii.gz", ".nii"),
                 OUT_EMBEDDING_NPY: (".npy",)}


class Timer:
    def __init__(self):
        self.steps: list[tuple[str, float]] = []

    def __call__(self, name: str):
        timer = self

        class _Step:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.steps.append((name, time.perf_counter() - self.t0))

        return _Step()

    def report(self) -> str:
        total = sum(s for _, s in self.steps)
        return ", ".join(f"{n} {s:.2f} s" for n, s in self.steps) + f", total {total:.2f} s"


# ---- segmentation through nnU-Net's predictor, weights loaded safely ----------------------------
def load_segmentation_predictor(model_dir: Path, entry: dict, mirror: bool, device: str):
    """nnU-Net's predictor holding the bundled folds (loaded with weights_only, never unpickled code)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from fomo_nnunet.models.network_record import network_for_prediction
    from fomo_nnunet.models.transfer import load_checkpoint_safely

    plans = PlansManager(json.loads((model_dir / "plans.json").read_text()))
    dataset_json = json.loads((model_dir / "dataset.json").read_text())
    checkpoints = [load_checkpoint_safely(model_dir / f"fold_{f}" / "checkpoint_final.pth") for f in entry["folds"]]
    configuration = plans.get_configuration(checkpoints[0]["init_args"]["configuration"])
    dev = torch.device(device)
    warm_gaussian(configuration.patch_size, dev if dev.type == "cuda" else torch.device("cpu"))
    # from the bundle's record of the network, not through nnU-Net's trainer search (seconds per process)
    network = network_for_prediction(checkpoints[0], plans, configuration, len(dataset_json["channel_names"]),
                                     plans.get_label_manager(dataset_json).num_segmentation_heads)
    with contextlib.redirect_stdout(io.StringIO()):  # a CPU notice nobody needs in a container log
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                                    perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans, configuration, [c["network_weights"] for c in checkpoints],
                                    dataset_json, checkpoints[0]["trainer_name"],
                                    checkpoints[0].get("inference_allowed_mirroring_axes"))
    return predictor


def warm_gaussian(patch_size, results_device) -> threading.Thread:
    """Compute nnU-Net's Gaussian tile weights into its own cache (`compute_gaussian` is lru_cached) in a thread,
    beside the model's loading and nnU-Net's preprocessing: scipy's Gaussian filter of a whole tile, about 2 s of
    CPU for 160^3, which releases the GIL. The key is the call nnU-Net 2.8's sliding window makes (the patch as a
    tuple, these keywords, the device it sums the tiles on: the GPU where nnU-Net predicts on it, else the CPU);
    should it differ, nnU-Net computes its own and nothing else changes."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    t = threading.Thread(target=compute_gaussian, args=(tuple(int(p) for p in patch_size),),
                         kwargs={"sigma_scale": 1. / 8, "value_scaling_factor": 10, "device": results_device},
                         daemon=True, name="fomo26-gaussian")
    t.start()
    return t


def segment(predictor, channels: list[np.ndarray], affine: np.ndarray) -> np.ndarray:
    """Label map on the channels' (common) grid: nnU-Net's preprocessing, sliding window, export."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    with tempfile.TemporaryDirectory(prefix="fomo26_") as tmp:
        # nnU-Net's own reader gives the array and properties its preprocessing expects
        files = []
        for i, ch in enumerate(channels):
            f = os.path.join(tmp, f"case_{i:04d}.nii.gz")
            nib.save(nib.Nifti1Image(ch, affine), f)
            files.append(f)
        data, props = SimpleITKIO().read_images(files)
        seg = predictor.predict_single_npy_array(data, props, None, None, False)
    # SimpleITK arrays are (z, y, x) of the same voxel grid that nibabel indexes (x, y, z)
    return np.asarray(seg).transpose(2, 1, 0)


# ---- the entry point ----------------------------------------------------------------------------
def _resolve_device(device: str) -> str:
    """'auto' -> 'cuda' where a GPU is available, else 'cpu'; any other name as given."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _segment_case(timer: Timer, model_dir: Path, entry: dict, task: Task, images: list, model_affine: np.ndarray,
                  slot: OutputFile, mirror: bool, device: str) -> None:
    """Segmentation: nnU-Net's predictor over the bundled folds -> a label map on the reference grid."""
    with timer("load model"), loading_model(model_dir, task):
        predictor = load_segmentation_predictor(model_dir, entry, mirror, device)
    with timer("preprocess + inference"):
        labels = segment(predictor, [im.data for im in images], model_affine)
    with timer("export"):
        write_label_nifti(slot, labels, images[0], task.max_label)
    return predictor.allowed_mirroring_axes


def _predict_value_case(timer: Timer, model_dir: Path, entry: dict, task: Task, images: list,
                        model_affine: np.ndarray, slot: OutputFile, mirror: bool, device: str) -> None:
    """Classification or regression: the folds' image-level models -> one probability or value."""
    from fomo_nnunet.challenge.inference import ImageLevelModel, predict_case_arrays

    with timer("load model"), loading_model(model_dir, task):
        model = ImageLevelModel.load(model_dir, entry["folds"], device=device)
    with timer("preprocess + inference"):
        value = predict_case_arrays(model, entry["folds"], [im.data for im in images], model_affine,
                                    mirror=mirror, device=device)
    with timer("export"):
        write_value_txt(slot, value, probability=task.kind == CLASSIFICATION)
    return model.mirror_axes


def _embed_case(timer: Timer, model_dir: Path, entry: dict, task: Task, images: list, model_affine: np.ndarray,
                slot: OutputFile, mirror: bool, device: str) -> None:
    """Embedding: the bundled encoder's vector of the reference channel."""
    from fomo_nnunet.challenge.inference import Embedder, embed_array

    with timer("load model"), loading_model(model_dir, task):
        embedder = Embedder.load(model_dir, device)
    with timer("preprocess + inference"):
        vector = embed_array(embedder, images[0].data, model_affine, device=device)
    with timer("export"):
        write_embedding_npy(slot, vector)


def _import_for(kind: str, device: str | None = None) -> None:
    """Import what predicting `kind` needs (torch, nnU-Net's predictor for segmentation); start CUDA."""
    import torch

    if kind == SEGMENTATION:
        import nnunetv2.inference.predict_from_raw_data  # noqa: F401
    else:
        import fomo_nnunet.challenge.inference  # noqa: F401
    if device is not None and device.startswith("cuda"):
        torch.cuda.init()


class Preload(threading.Thread):
    """`_import_for(kind)` in a daemon thread. A failure there is left to the main thread's own `_import_for`
    after `join`, which raises it with its traceback."""

    def __init__(self, kind: str):
        super().__init__(daemon=True, name="fomo26-preload")
        self.kind, self.error = kind, None
        self.start()

    def run(self):
        try:
            _import_for(self.kind)
        except BaseException as e:  # reported by the main thread's own import
            self.error = e


# task kind -> how one case of it is predicted and written
_PREDICT_AND_WRITE = {SEGMENTATION: _segment_case, CLASSIFICATION: _predict_value_case,
                      REGRESSION: _predict_value_case, EMBEDDING: _embed_case}


def run_case(task: Task, given: dict[str, str | None], output: str, bundle: str, mirror: bool | None = None,
             device: str = "auto", verbose: bool = False, log=lambda m: print(m, file=sys.stderr)) -> Timer:
    """Run one case; raises FomoInputError for bad inputs and BundleError for a bad bundle.

    Everything that can be checked without running the model is checked first, cheapest first: the
    arguments and --output, every input's header, the channels' fields of view, the bundle's files;
    then the voxels are read and the output's temporary file is made. Nothing is written on failure.
    """
    from fomo_nnunet.challenge.mirroring import MIRRORING_DEFAULT, mirroring_note

    mirror = MIRRORING_DEFAULT if mirror is None else mirror
    timer = Timer()
    chosen = select_inputs(task, given)
    check_output_target(output, OUTPUT_SUFFIX[task.output], list(given.items()), task.key)
    for a in unused_arguments(task, given):
        log(f"note: --{a} is not used by {task.key} ({task.name}), ignored")
    with timer("check inputs"):
        headers = [(arg, read_input_header(arg, path)) for arg, path in chosen]
        notes = check_fields_of_view(headers)
        manifest = load_manifest(bundle)
        model_dir, entry = model_entry(bundle, manifest, task)
        check_model_files(model_dir, entry, task)
    # the model's modules import beside the reading: seconds of Python byte-code (nnU-Net's predictor brings
    # torch._dynamo) against zlib and numpy work that releases the GIL
    preload = Preload(task.kind)
    with timer("read inputs"):
        images = [read_input(arg, path, h) for (arg, path), (_, h) in zip(chosen, headers)]
    with timer("resample to reference"):
        reference = images[0]
        images = [reference] + [resample_onto(im, reference) for im in images[1:]]
    for n in [n for im in images for n in im.notes] + notes:
        log(f"note: {n}")
    # the model reads its inputs through SimpleITK, which refuses sheared grids; outputs keep the input's affine
    model_affine = orthogonal_affine(reference.affine)
    device = _resolve_device(device)
    with timer("import"):  # what is left of it after the inputs were read; CUDA's start
        preload.join()
        _import_for(task.kind, device)
    slot = None
    try:
        slot = OutputFile(output)
        predict_and_write = _PREDICT_AND_WRITE.get(task.kind)
        if predict_and_write is not None:
            axes = predict_and_write(timer, model_dir, entry, task, images, model_affine, slot, mirror, device)
            if task.kind != EMBEDDING:  # the mirroring axes the model allowed
                log(f"note: {mirroring_note(mirror, axes)}")
    finally:
        if slot is not None:
            slot.discard()  # nothing left once committed; the temporary file when anything failed
    if verbose:
        log(f"{task.key} timing: {timer.report()}")
    return timer
