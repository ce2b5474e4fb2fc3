"""Prediction for classification/regression models and embeddings from the pretrained encoder.

Segmentation models predict through nnU-Net's own predictor (`nnUNetv2_predict`). Image-level
models use nnU-Net's preprocessing of the model's plans on the raw images, then one centred crop
of the brain (the crop the trainer trained on), optional mirroring test-time augmentation, and the
mean over folds. Weights are always loaded safely (fomo_nnunet.models.transfer.load_checkpoint_safely).

Embedding rule (tasks 6 and 7): the image is preprocessed as the pretraining data was (cropped to
its non-zero region, normalised with the checkpoint's scheme over that region, resampled to the
checkpoint's spacing), centre-cropped or zero-padded to the pretraining patch, passed through the
FROZEN encoder; the embedding is the global average pool of the deepest stage (its width long), or
of every stage, concatenated shallow to deep, as the checkpoint's `fomo_metadata["embedding_pooling"]`
says ("deepest" when absent; fomo_nnunet.models.embedding_stats.pooled_embedding). A checkpoint that carries
embedding statistics of its pretraining corpus (`fomo_metadata["embedding_stats"]`, computed with that
pooling) has each dimension standardised with them (probe-ready: scale near 1); one without them
(older, imported) embeds raw.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import itertools
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from fomo_nnunet.models.embedding_stats import (DEFAULT_POOLING, POOLING_KEY, POOLING_MEANING, EmbeddingStats,
                                         check_pooling, compute_embedding_stats, embedding_length,
                                         pooled_embedding, pooling_of)
from fomo_nnunet.image_level import crop_or_pad, decode_outputs, task_from_plans
from fomo_nnunet.io.atomic import replacing
from fomo_nnunet.challenge.mirroring import MIRRORING_DEFAULT, mirroring_note
from fomo_nnunet.tasks import CLASSIFICATION, REGRESSION, SEGMENTATION

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def strip_nifti(name: str) -> str:
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def group_cases(folder: str | os.PathLike, num_channels: int) -> dict[str, list[str]]:
    """nnU-Net's naming: {case: [case_0000.nii.gz, case_0001.nii.gz, ...]}; an incomplete case is an error."""
    files: dict[str, dict[int, str]] = {}
    for f in sorted(os.listdir(folder)):
        m = CHANNEL_SUFFIX.match(strip_nifti(f))
        if f.endswith((".nii.gz", ".nii")) and m:
            files.setdefault(m["case"], {})[int(m["channel"])] = os.path.join(folder, f)
    if not files:
        raise FileNotFoundError(f"{folder}: no images named CASE_0000.nii.gz (nnU-Net's naming)")
    out = {}
    for case, chans in files.items():
        missing = [c for c in range(num_channels) if c not in chans]
        if missing:
            raise FileNotFoundError(f"{folder}: case '{case}' lacks channel(s) "
                                    f"{', '.join(f'{case}_{c:04d}' for c in missing)}")
        out[case] = [chans[c] for c in range(num_channels)]
    return out


def mirror_combinations(axes) -> list[tuple[int, ...]]:
    """Every subset of the allowed spatial mirroring axes, as tensor dims (the identity first)."""
    dims = [a + 2 for a in (axes or ())]
    return [c for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]


def no_trained_fold(model_dir: Path, fold, checkpoint: str) -> str:
    """What to say when a model folder holds no trained fold: the nnUNetv2_train command that makes one
    (read off nnU-Net's folder names, results/DatasetNNN_*/<trainer>__<plans>__<configuration>)."""
    parts = model_dir.name.split("__")
    dataset = re.match(r"Dataset(\d+)_", model_dir.parent.name)
    trained = sorted(p.parent.name for p in model_dir.glob(f"fold_*/{checkpoint}"))
    if len(parts) == 3 and dataset:
        train = (f"nnUNetv2_train {int(dataset.group(1))} {parts[2]} {fold} -p {parts[1]} -tr {parts[0]}")
    else:
        train = "nnUNetv2_train DATASET 3d_fullres FOLD -p PLANS -tr TRAINER (-m takes <trainer>__<plans>__3d_fullres)"
    where = model_dir / f"fold_{fold}" / checkpoint if model_dir.is_dir() else model_dir
    return (f"no trained fold at {where}: run `{train}` first"
            + (f" (trained here: {', '.join(trained)}; choose them with -f)" if trained else ""))


@dataclass
class ImageLevelModel:
    """The folds of one trained classification or regression model, ready to predict."""

    networks: list
    plans_manager: object
    configuration_manager: object
    dataset_json: dict
    task: object
    mirror_axes: tuple
    device: torch.device

    @classmethod
    def load(cls, model_dir: str | os.PathLike, folds=("all",), checkpoint: str = "checkpoint_final.pth",
             device: str = "cpu") -> ImageLevelModel:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from fomo_nnunet.models.network_record import network_for_prediction
        from fomo_nnunet.models.transfer import load_checkpoint_safely

        model_dir = Path(model_dir)
        if not (model_dir / "plans.json").is_file():
            raise FileNotFoundError(no_trained_fold(model_dir, folds[0] if folds else "all", checkpoint))
        plans = json.loads((model_dir / "plans.json").read_text())
        task = task_from_plans(plans)
        if task.kind == SEGMENTATION:
            raise ValueError(f"{model_dir} is a segmentation model ({task.key}); predict it with nnUNetv2_predict "
                             f"-d ... -p {plans.get('plans_name')} -tr <trainer> (nnU-Net's predictor)")
        if task.kind not in (CLASSIFICATION, REGRESSION):
            raise ValueError(f"{model_dir}: {task.key} is a {task.kind} task; use `fomo-nnunet embed`")
        dataset_json = json.loads((model_dir / "dataset.json").read_text())
        pm = PlansManager(plans)
        networks, mirror_axes = [], None
        dev = torch.device(device)
        for fold in folds:
            path = model_dir / f"fold_{fold}" / checkpoint
            if not path.is_file():
                raise FileNotFoundError(no_trained_fold(model_dir, fold, checkpoint))
            ckpt = load_checkpoint_safely(path)
            cm = pm.get_configuration(ckpt["init_args"]["configuration"])
            net = network_for_prediction(ckpt, pm, cm, len(dataset_json["channel_names"]), 2)
            net.load_state_dict(ckpt["network_weights"])
            networks.append(net.to(dev).eval())
            mirror_axes = ckpt.get("inference_allowed_mirroring_axes")
        return cls(networks, pm, cm, dataset_json, task, tuple(mirror_axes or ()), dev)

    @property
    def num_channels(self) -> int:
        return len(self.dataset_json["channel_names"])

    def preprocess_files(self, files: list[str]) -> np.ndarray:
        """nnU-Net's preprocessing of the model's plans: (C, *patch-ready spatial) float32."""
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        with contextlib.redirect_stdout(io.StringIO()):
            data, _, _ = preprocessor.run_case(files, None, self.plans_manager, self.configuration_manager,
                                               self.dataset_json)
        return np.asarray(data, dtype=np.float32)

    def predict_preprocessed(self, data: np.ndarray, mirror: bool = False) -> np.ndarray:
        """Class probabilities (K,) or the value (1,) in the task's unit, averaged over folds and mirrorings."""
        x = torch.from_numpy(crop_or_pad(data, self.configuration_manager.patch_size)[None]).float().to(self.device)
        flips = mirror_combinations(self.mirror_axes) if mirror else [()]
        outs = []
        with torch.no_grad():
            for net in self.networks:
                stats = getattr(net, "fomo_target_stats", None)
                stats = None if stats is None else tuple(float(v) for v in stats)
                for dims in flips:
                    xi = torch.flip(x, dims) if dims else x
                    outs.append(decode_outputs(net(xi), self.task.kind, stats)[0])
        return np.mean(outs, axis=0).reshape(-1)

    def predict_files(self, files: list[str], mirror: bool = False) -> np.ndarray:
        return self.predict_preprocessed(self.preprocess_files(files), mirror)

    def value(self, output: np.ndarray) -> float:
        """The one number the challenge wants: P(positive) for binary classification, else the value."""
        if self.task.kind == CLASSIFICATION:
            if output.shape[0] != 2:
                raise ValueError(f"{self.task.key} has {output.shape[0]} classes; one probability needs two")
            return float(output[1])
        return float(output[0])


def predict_folder(images: str | os.PathLike, output: str | os.PathLike, model_dir: str | os.PathLike,
                   folds=("all",), checkpoint: str = "checkpoint_final.pth", mirror: bool = MIRRORING_DEFAULT,
                   device: str = "cpu", progress: bool = True, log=None) -> Path:
    """Predict every case of an nnU-Net images folder; writes OUTPUT/predictions.csv (case_id, prediction
    [, probability per class]) atomically and returns its path. `log` gets the mirroring line."""
    from tqdm import tqdm

    model = ImageLevelModel.load(model_dir, folds, checkpoint, device)
    if log is not None:
        log(mirroring_note(mirror, model.mirror_axes))
    cases = group_cases(images, model.num_channels)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    classes = list(model.task.classes) if model.task.kind == CLASSIFICATION else []
    rows = []
    for case, files in tqdm(sorted(cases.items()), desc=f"predict {model.task.key}", disable=not progress):
        o = model.predict_files(files, mirror)
        value = model.value(o) if not (classes and len(classes) > 2) else int(np.argmax(o))
        rows.append([case, f"{value:.6g}", *(f"{p:.6g}" for p in (o if classes else []))])
    with replacing(out / "predictions.csv") as tmp, open(tmp, "x", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "prediction", *(f"p_{c}" for c in classes)])
        w.writerows(rows)
    return out / "predictions.csv"


def _write_temp_nifti(arrays: list[np.ndarray], affine: np.ndarray, folder: str) -> list[str]:
    files = []
    for i, a in enumerate(arrays):
        f = os.path.join(folder, f"case_{i:04d}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(a, dtype=np.float32), affine), f)
        files.append(f)
    return files


def predict_case_arrays(model_dir: str | os.PathLike | ImageLevelModel, folds, arrays: list[np.ndarray],
                        affine: np.ndarray, mirror: bool = MIRRORING_DEFAULT, device: str = "cpu") -> float:
    """One case given as arrays on one grid (nibabel order) -> P(positive) or the value (fomo26).
    `model_dir` may be a model already loaded (folds and device are then its own)."""
    model = model_dir if isinstance(model_dir, ImageLevelModel) else ImageLevelModel.load(model_dir, folds,
                                                                                          device=device)
    if len(arrays) != model.num_channels:
        raise ValueError(f"the model takes {model.num_channels} channel(s), got {len(arrays)}")
    with tempfile.TemporaryDirectory(prefix="fomo_predict_") as tmp:
        return model.value(model.predict_files(_write_temp_nifti(arrays, affine, tmp), mirror))


# ---- embeddings from the frozen pretrained encoder ---------------------------------------------
@dataclass
class Embedder:
    encoder: torch.nn.Module
    metadata: object
    device: torch.device
    stats: EmbeddingStats | None = None  # applied to every vector when the checkpoint carries them
    pooling: str = DEFAULT_POOLING       # the checkpoint's fomo_metadata["embedding_pooling"]

    def __post_init__(self) -> None:
        check_pooling(self.pooling)
        if self.stats is not None and self.stats.length != self.length:
            raise ValueError(f"embedding statistics of length {self.stats.length} do not fit the "
                             f"{self.pooling!r} embedding ({self.length} long)")

    @classmethod
    def load(cls, checkpoint: str | os.PathLike, device: str = "cpu", with_stats: bool = True) -> Embedder:
        """The checkpoint's encoder, pooling and (unless not `with_stats`) embedding statistics; statistics
        whose length does not fit the pooling are refused, naming the file."""
        from fomo_nnunet.models.checkpoints import find_checkpoint
        from fomo_nnunet.models.transfer import METADATA_KEY, PretrainMetadata, load_checkpoint_safely, read_metadata

        path = find_checkpoint(checkpoint) if os.path.isdir(checkpoint) else str(checkpoint)
        ckpt = load_checkpoint_safely(path)
        meta: PretrainMetadata = read_metadata(ckpt, path)
        encoder = meta.build_network(num_outputs=meta.num_input_channels).encoder
        # only the encoder is needed: an imported checkpoint may carry no (or another) decoder
        weights = {k[len("encoder."):]: v for k, v in ckpt["network_weights"].items() if k.startswith("encoder.")}
        encoder.load_state_dict(weights)
        encoder.return_skips = True
        pooling = pooling_of(ckpt[METADATA_KEY], path)
        stats = EmbeddingStats.from_checkpoint(ckpt, path) if with_stats else None
        if stats is not None and stats.length != embedding_length(encoder, pooling):
            raise ValueError(f"{path}: its embedding statistics are {stats.length} long, the encoder's {pooling!r} "
                             f"embedding ({POOLING_KEY}) {embedding_length(encoder, pooling)}; recompute them "
                             f"with `fomo-nnunet embedding-stats {path} --pooling {pooling} ...`")
        return cls(encoder.to(torch.device(device)).eval(), meta, torch.device(device), stats, pooling)

    def with_pooling(self, pooling: str) -> Embedder:
        """The same encoder with another pooling; statistics of the present pooling do not carry over."""
        if check_pooling(pooling) == self.pooling:
            return self
        return dataclasses.replace(self, pooling=pooling, stats=None)

    @property
    def length(self) -> int:
        return embedding_length(self.encoder, self.pooling)

    def preprocess_file(self, file: str) -> np.ndarray:
        """As the pretraining data: crop to non-zero, normalise over it, resample to the checkpoint's spacing."""
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
        from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
        from nnunetv2.preprocessing.resampling.default_resampling import (compute_new_shape,
                                                                         resample_data_or_seg_to_shape)

        data, props = SimpleITKIO().read_images([file])
        data = np.nan_to_num(data.astype(np.float32))
        data, seg, _ = crop_to_nonzero(data)
        spacing = list(props["spacing"])
        target = list(self.metadata.spacing)
        scheme = _normalizer(self.metadata.normalization[0])
        use_mask = bool(self.metadata.objective_settings.get("use_mask_for_norm", [True])[0])
        data[0] = scheme(use_mask_for_norm=use_mask, intensityproperties={}).run(data[0], seg[0])
        new_shape = compute_new_shape(data.shape[1:], spacing, target)
        return resample_data_or_seg_to_shape(data, new_shape, spacing, target, is_seg=False, order=3, order_z=0,
                                             force_separate_z=None).astype(np.float32)

    def raw_embedding(self, data: np.ndarray) -> np.ndarray:
        """The pooled stage(s) of a preprocessed scan (`pooling`), before any normalisation."""
        return pooled_embedding(self.encoder, data, self.metadata.patch_size, self.device, self.pooling)

    def embed_preprocessed(self, data: np.ndarray) -> np.ndarray:
        """The embedding: raw, standardised with the checkpoint's statistics when it has them."""
        vector = self.raw_embedding(data)
        return vector if self.stats is None else self.stats.apply(vector)

    def describe_scaling(self) -> str:
        """One line: how this embedder pools and scales its vectors."""
        pooling = f"; pooling {self.pooling!r}: {POOLING_MEANING[self.pooling]}"
        if self.stats is None:
            return ("raw embeddings: the checkpoint carries no embedding statistics (add them with "
                    f"`fomo-nnunet embedding-stats`){pooling}")
        return (f"embeddings standardised per dimension with the checkpoint's statistics ({self.stats.n_cases} "
                f"pretraining cases){pooling}")

    def embed_file(self, file: str) -> np.ndarray:
        return self.embed_preprocessed(self.preprocess_file(file))


def _normalizer(name: str):
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    found = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "preprocessing", "normalization"),
                                        name, "nnunetv2.preprocessing.normalization")
    if found is None:
        raise ValueError(f"normalisation scheme {name!r} (from the checkpoint's metadata) is not one of nnU-Net's")
    return found


def embed_array(checkpoint: str | os.PathLike | Embedder, data: np.ndarray, affine: np.ndarray,
                device: str = "cpu") -> np.ndarray:
    """One image (nibabel order) -> its 1-D float32 embedding (fomo26 tasks 6 and 7); `checkpoint` may be
    an Embedder already loaded."""
    embedder = checkpoint if isinstance(checkpoint, Embedder) else Embedder.load(checkpoint, device)
    with tempfile.TemporaryDirectory(prefix="fomo_embed_") as tmp:
        return embedder.embed_file(_write_temp_nifti([data], affine, tmp)[0])


def embed_folder(images: str | os.PathLike, output: str | os.PathLike, checkpoint: str | os.PathLike,
                 device: str = "cpu", progress: bool = True, overwrite: bool = False) -> dict:
    """One OUTPUT/<case>.npy per image (nnU-Net's `_0000` channel suffix dropped); existing files are kept
    unless `overwrite`. Unusable images are reported, not fatal. Returns {written, skipped, failed}."""
    from tqdm import tqdm

    embedder = Embedder.load(checkpoint, device)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(f for f in os.listdir(images) if f.endswith((".nii.gz", ".nii")))
    if not files:
        raise FileNotFoundError(f"{images}: no .nii.gz images")
    report = {"written": 0, "skipped": 0, "failed": {}, "length": embedder.length,
              "scaling": embedder.describe_scaling()}
    for f in tqdm(files, desc="embed", disable=not progress):
        stem = strip_nifti(f)
        m = CHANNEL_SUFFIX.match(stem)
        case = m["case"] if m else stem
        target = out / f"{case}.npy"
        if target.exists() and not overwrite:
            report["skipped"] += 1
            continue
        try:
            vector = embedder.embed_file(os.path.join(images, f))
        except Exception as e:  # one bad image must not stop a folder of thousands
            report["failed"][f] = f"{type(e).__name__}: {e}"
            continue
        with replacing(target) as tmp, open(tmp, "xb") as fh:
            np.save(fh, vector, allow_pickle=False)
        report["written"] += 1
    return report


def _preprocessed_images(embedder: Embedder, files: list[str], failed: dict[str, str]):
    for f in files:
        try:
            yield embedder.preprocess_file(f)
        except Exception as e:  # one unreadable image is reported, not fatal
            failed[f] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def images_embedding_stats(checkpoint: str | os.PathLike, images: str | os.PathLike,
                           max_cases: int = 512, device: str = "cpu", progress: bool | None = None,
                           pooling: str | None = None) -> tuple[EmbeddingStats, dict[str, str]]:
    """Embedding statistics of a checkpoint's encoder over a folder of NIfTI images, each preprocessed as
    Embedder does (at most `max_cases`, evenly spaced over the sorted names), with `pooling` (None: the
    checkpoint's own). Returns (stats, {file: why} for the images that could not be used)."""
    from fomo_nnunet.models.embedding_stats import select_cases

    embedder = Embedder.load(checkpoint, device, with_stats=False)  # its statistics are being replaced
    embedder = embedder.with_pooling(pooling or embedder.pooling)
    names = [f for f in os.listdir(images) if f.endswith((".nii.gz", ".nii"))] if os.path.isdir(images) else []
    if not names:
        raise FileNotFoundError(f"{images}: no .nii.gz images")
    files = [os.path.join(images, f) for f in select_cases(names, max_cases)]
    failed: dict[str, str] = {}
    try:
        stats = compute_embedding_stats(embedder.encoder, _preprocessed_images(embedder, files, failed),
                                        embedder.metadata.patch_size, embedder.device, progress, total=len(files),
                                        pooling=embedder.pooling)
    except ValueError:
        if len(failed) == len(files):
            raise ValueError(f"{images}: none of its {len(files)} images could be read (first: "
                             f"{next(iter(failed.items()))[0]}: {next(iter(failed.values()))})") from None
        raise
    if stats.n_cases < 2:
        raise ValueError(f"{images}: {stats.n_cases} usable image(s); statistics need at least 2")
    return stats, failed
