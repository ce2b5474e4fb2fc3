"""Cross-entropy class weights from label frequencies (fomo_nnunet.class_weights)."""
from __future__ import annotations

import numpy as np
import pytest

from fomo_nnunet.class_weights import label_voxel_counts, sqrt_inverse_frequency


def test_counts_skip_voxels_outside_the_mask_and_the_ignore_label():
    a = np.array([[0, 0, 1], [-1, 2, 2]])
    b = np.array([0, 0, 0, 3, 1])
    assert label_voxel_counts([a, b], 3, ignore_label=3).tolist() == [5, 2, 2]
    with pytest.raises(ValueError, match="label 3 found"):
        label_voxel_counts([b], 3)


def test_weights_are_the_square_root_of_the_inverse_frequency_relative_to_background():
    w = sqrt_inverse_frequency(np.array([10000, 100, 1, 0]), cap=50)
    assert w.tolist() == [1.0, 10.0, 50.0, 50.0]   # 100 capped at 50; an absent class gets the cap
    assert sqrt_inverse_frequency(np.array([100, 400])).tolist() == [1.0, 0.5]


@pytest.mark.parametrize("counts,cap,message", [([5], 100, "at least one class"), ([0, 3], 100, "no background"),
                                                ([5, 3], 0.5, "cap must be")])
def test_bad_counts_or_cap_are_refused(counts, cap, message):
    with pytest.raises(ValueError, match=message):
        sqrt_inverse_frequency(np.array(counts), cap)
