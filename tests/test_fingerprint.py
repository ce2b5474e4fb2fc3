"""Our planners' fingerprint: nnU-Net's, with a bounded number of foreground intensity draws per case."""
from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import pytest

from helpers import make_raw_dataset, nnunet_env, run


@pytest.mark.slow
def test_bounded_draws_keep_nnunets_shapes_and_the_foreground_statistics(tmp_path):
    env = nnunet_env(tmp_path)
    folder = make_raw_dataset(tmp_path / "raw", 977, "Fingerprint", n_cases=3, n_channels=2, seed=3)
    p = run([sys.executable, "-c",
             "import json; from fomo_nnunet.plans.fixed_network import FomoFingerprintExtractor as E, "
             "extract_fingerprint_if_missing; extract_fingerprint_if_missing(977, 1); "
             "print(json.dumps({'draws': E(977, 1).num_foreground_voxels_for_intensitystats}))"], env)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["draws"] == 3 * 100_000   # nnU-Net's own extractor would draw 1e8 for these three cases
    saved = json.loads((tmp_path / "preprocessed" / "Dataset977_Fingerprint" / "dataset_fingerprint.json").read_text())
    assert saved["spacings"] == [[4.0, 4.0, 4.0]] * 3
    for channel in range(2):
        # every foreground voxel of every case (the label map is the brain mask): the statistics the draws estimate
        values = np.concatenate([
            nib.load(folder / "imagesTr" / f"casetr{i:03d}_{channel:04d}.nii.gz").get_fdata()[
                nib.load(folder / "labelsTr" / f"casetr{i:03d}.nii.gz").get_fdata() > 0] for i in range(3)])
        stats = saved["foreground_intensity_properties_per_channel"][str(channel)]
        spread = np.percentile(values, 99.5) - np.percentile(values, 0.5)
        for key, exact in (("mean", values.mean()), ("median", np.median(values)),
                           ("percentile_00_5", np.percentile(values, 0.5)),
                           ("percentile_99_5", np.percentile(values, 99.5))):
            assert abs(stats[key] - exact) < 0.02 * spread, (channel, key, stats[key], exact)
        assert values.min() <= stats["min"] and stats["max"] <= values.max()
