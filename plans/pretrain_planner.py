"""Pretraining plans: a fixed foundation-model architecture, patch and spacing in a standard plans file.

nnU-Net's default planner sizes the network to the dataset; for a foundation model we want the
opposite: one architecture chosen up front (a preset), one patch and one spacing, so that every
downstream task can load every weight. The plans file names only classes nnU-Net resolves
(DefaultPreprocessor, ZScoreNormalization, dynamic_network_architectures networks), so
`nnUNetv2_preprocess -plans_name fomoPretrainPlans` and `nnUNetv2_train -p fomoPretrainPlans`
work unchanged.
"""
from __future__ import annotations

from fomo_nnunet.data.preprocess import check_references
from fomo_nnunet.plans.fixed_network import FixedNetworkPlanner, copy_beside_plans, extract_fingerprint_if_missing
from fomo_nnunet.plans.presets import ARCH_PRESETS, CONFIGURATION, PRETRAIN_PLANS_NAME, ArchPreset, architecture_dict


def check_patch(preset: ArchPreset, patch_size: tuple[int, ...]) -> None:
    factor = 2 ** (preset.n_stages - 1)
    bad = [p for p in patch_size if p % factor or p < 4 * factor]
    if bad:
        raise ValueError(f"--patch {tuple(patch_size)}: every axis must be a multiple of {factor} and at least "
                         f"{4 * factor} for preset '{preset.name}' ({preset.n_stages} stages)")


class FomoPretrainPlanner(FixedNetworkPlanner):
    """Writes a plans file with one 3d_fullres configuration of a fixed preset architecture."""

    def __init__(self, dataset_name_or_id: str | int, preset: ArchPreset, patch_size: tuple[int, int, int],
                 spacing: tuple[float, float, float], batch_size: int, plans_name: str = PRETRAIN_PLANS_NAME):
        super().__init__(dataset_name_or_id, plans_name=plans_name, suppress_transpose=True)
        check_patch(preset, patch_size)
        self.preset = preset
        self.patch_size = tuple(int(p) for p in patch_size)
        self.target_spacing = tuple(float(s) for s in spacing)
        self.batch_size = int(batch_size)

    def determine_normalization_scheme_and_whether_mask_is_used_for_norm(self):
        # Z-score per scan, over the scan's non-zero region: skull-stripped and non-stripped scans
        # then share one intensity scale inside the head, and the background stays at zero.
        n = len(self.dataset_json["channel_names"])
        return ["ZScoreNormalization"] * n, [True] * n

    def plan_experiment(self) -> dict:
        """The plans (one 3d_fullres configuration of the preset's network), saved and returned."""
        configuration = self.fullres_configuration(
            self.generate_data_identifier(CONFIGURATION), self.batch_size, self.patch_size,
            self.median_shape_at_spacing(self.target_spacing), self.target_spacing,
            architecture_dict(self.preset, self.patch_size, self.target_spacing))
        return self.save_fixed_plans(configuration, {"role": "pretraining", "arch_preset": self.preset.name})


def plan_pretrain(dataset_id: int, arch: str = "resenc_b", patch: int | None = None,
                  spacing: float | None = None, batch_size: int | None = None,
                  plans_name: str = PRETRAIN_PLANS_NAME, num_processes: int = 2,
                  verify_dataset_integrity: bool = False) -> dict:
    """Extract nnU-Net's fingerprint when missing, then write the pretraining plans."""
    if arch not in ARCH_PRESETS:
        raise ValueError(f"--arch {arch!r} is not a preset; choose from {', '.join(ARCH_PRESETS)}")
    preset = ARCH_PRESETS[arch]
    check_references(dataset_id)   # a corpus converted by reference whose scans moved: say so, before reading
    extract_fingerprint_if_missing(dataset_id, num_processes, verify_dataset_integrity)
    patch = patch or preset.default_patch
    spacing = spacing or preset.default_spacing
    planner = FomoPretrainPlanner(int(dataset_id), preset, (patch,) * 3, (float(spacing),) * 3,
                                  batch_size or preset.default_batch_size, plans_name)
    plans = planner.plan_experiment()
    # the session list, for session-pair objectives (fomo_nnunet.ssl.sessions) where nnUNet_raw is not mounted
    copy_beside_plans(planner.raw_dataset_folder, planner.dataset_name, ("dataset.json", "subjects.json"))
    return plans
