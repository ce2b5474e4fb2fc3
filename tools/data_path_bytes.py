#!/usr/bin/env python3
"""Bytes per scan along the pretraining data path, and how real MRI compresses against the synthetic scans.

    .venv/bin/python tools/data_path_bytes.py --source SYNTH/pretrain --raw $nnUNet_raw/Dataset900_X \
        --preprocessed $nnUNet_preprocessed/Dataset900_X/fomoPretrainPlans_3d_fullres

Prints (JSON) the scans, the bytes of the source's NIfTI files, of the raw dataset folder (all files:
masks, fixed copies, dataset.json, records) and of the preprocessed folder, each in total and per scan.
`--compressibility` adds bytes per voxel of one synthetic scan and of the 1 mm MNI152 T1 template that
nilearn ships (skull-stripped, an average of many subjects: smoother than one scan), each stored as the source
would be (int16 and float32 .nii.gz) and as nnU-Net stores preprocessed data (z-scored float32, blosc2
LZ4HC level 5 with the filter nnU-Net picks, 1 mm, chunks for 160^3 patches; and the same as float16), and
the bytes of the template's brain mask as the converter writes masks (uint8, gzip level 6).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

import numpy as np


def folder_bytes(folder: Path, suffixes: tuple[str, ...] = ()) -> tuple[int, int]:
    total = n = 0
    for root, _, files in os.walk(folder):
        for f in files:
            if not suffixes or f.endswith(suffixes):
                total += os.path.getsize(os.path.join(root, f))
                n += 1
    return total, n


def nifti_gz_bytes(data: np.ndarray, dtype) -> int:
    import nibabel as nib

    img = nib.Nifti1Image(data.astype(dtype), np.eye(4))
    return len(gzip.compress(img.to_bytes(), compresslevel=6))   # nibabel's default level


def blosc2_bytes(data: np.ndarray, patch=(160, 160, 160)) -> int:
    import blosc2
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    arr = np.ascontiguousarray(data[None])
    blocks, chunks = comp_blosc2_params(arr.shape, patch, arr.itemsize)
    codec, clevel = blosc2.Codec.LZ4HC, 5
    filt = nnUNetDatasetBlosc2._select_filter(arr, blocks, chunks, codec, clevel)
    b = blosc2.asarray(arr, chunks=chunks, blocks=blocks,
                       cparams={"codec": codec, "clevel": clevel, "filters": [filt], "nthreads": 1})
    return b.schunk.cbytes


def zscore(data: np.ndarray) -> np.ndarray:
    m = data != 0
    out = np.zeros(data.shape, np.float32)
    out[m] = (data[m] - data[m].mean()) / max(data[m].std(), 1e-8)
    return out


def compressibility(synthetic: Path) -> dict:
    import nibabel as nib
    from nilearn import datasets

    mni = np.asarray(datasets.load_mni152_template(resolution=1).get_fdata(), np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata()) > 0
    syn = np.asarray(nib.load(synthetic).get_fdata(), np.float32)
    out = {}
    for name, vol in (("synthetic", syn), ("mni152_template", np.where(brain, mni, 0))):
        scaled = vol / max(float(np.abs(vol).max()), 1e-8) * 1000   # as an int16 scanner image would hold it
        z = zscore(vol)
        n = vol.size
        out[name] = {"shape": list(vol.shape), "nonzero_fraction": round(float((vol != 0).mean()), 3),
                     "int16_nii_gz_bytes_per_voxel": round(nifti_gz_bytes(scaled, np.int16) / n, 3),
                     "float32_nii_gz_bytes_per_voxel": round(nifti_gz_bytes(vol, np.float32) / n, 3),
                     "blosc2_float32_bytes_per_voxel": round(blosc2_bytes(z) / n, 3),
                     "blosc2_float16_bytes_per_voxel": round(blosc2_bytes(z.astype(np.float16)) / n, 3)}
    mask = nib.Nifti1Image(brain.astype(np.uint8), np.eye(4)).to_bytes()
    out["mni152_template"]["brain_mask_nii_gz_level6_bytes"] = len(gzip.compress(mask, compresslevel=6))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, required=True)
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--preprocessed", type=Path, default=None)
    ap.add_argument("--compressibility", action="store_true")
    a = ap.parse_args()
    src, n = folder_bytes(a.source, (".nii.gz", ".nii"))
    raw, _ = folder_bytes(a.raw)
    res = {"scans": n, "source_bytes": src, "raw_bytes": raw, "raw_fraction_of_source": round(raw / src, 4),
           "source_mb_per_scan": round(src / n / 1e6, 3), "raw_mb_per_scan": round(raw / n / 1e6, 3)}
    masks, _ = folder_bytes(a.raw / "labelsTr")
    res["mask_mb_per_scan"] = round(masks / n / 1e6, 3)
    res["dataset_json_bytes"] = (a.raw / "dataset.json").stat().st_size
    if a.preprocessed:
        pre, _ = folder_bytes(a.preprocessed)
        cases = len(list(a.preprocessed.glob("*.pkl")))   # a shard's folder holds fewer cases than the source
        res.update(preprocessed_cases=cases, preprocessed_bytes=pre,
                   preprocessed_mb_per_scan=round(pre / max(cases, 1) / 1e6, 3))
    if a.compressibility:
        first = next(p for p in sorted(a.source.rglob("*.nii.gz")))
        res["compressibility"] = compressibility(first)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
