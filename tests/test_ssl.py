import itertools
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from fomo_nnunet.ssl import SkipGate, apply_mask, block_mask, masked_reconstruction_loss, vicreg_loss


def _block_values(mask: torch.Tensor, block: tuple[int, int, int]) -> torch.Tensor:
    """(B, n_blocks) bool: whether each block is masked; asserts every block is all-or-nothing."""
    _, _, *shape = mask.shape
    values = []
    for starts in itertools.product(*(range(0, s, b) for s, b in zip(shape, block))):
        region = mask[:, 0, starts[0]:starts[0] + block[0], starts[1]:starts[1] + block[1],
                      starts[2]:starts[2] + block[2]].flatten(1)
        assert (region.all(1) | ~region.any(1)).all(), f"block at {starts} is partly masked"
        values.append(region[:, 0])
    return torch.stack(values, dim=1)


@pytest.mark.parametrize("shape, block", [((16, 16, 16), (4, 4, 4)), ((10, 13, 7), (4, 4, 4)),
                                          ((10, 13, 7), (3, 5, 2)), ((9, 9, 9), (2, 2, 2))])
@pytest.mark.parametrize("ratio", [0.25, 0.6, 0.75])
def test_mask_ratio_is_respected_per_sample(shape, block, ratio):
    mask = block_mask(shape, 5, block, ratio, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (5, 1, *shape) and mask.dtype == torch.bool
    n_blocks = math.prod(math.ceil(s / b) for s, b in zip(shape, block))
    per_block = _block_values(mask, block)
    assert per_block.shape == (5, n_blocks)
    assert per_block.sum(1).tolist() == [round(ratio * n_blocks)] * 5


def test_voxel_fraction_equals_ratio_when_blocks_divide_the_patch():
    mask = block_mask((16, 16, 16), 3, 4, 0.75)
    assert mask.float().mean(dim=(1, 2, 3, 4)).tolist() == [0.75] * 3


def test_masks_differ_across_samples():
    mask = block_mask((16, 16, 16), 8, 4, 0.6, generator=torch.Generator().manual_seed(1))
    flat = mask.flatten(1)
    assert len({tuple(row.tolist()) for row in flat}) == 8


def test_mask_is_reproducible_with_a_seeded_generator():
    first = block_mask((12, 12, 12), 4, (3, 4, 5), 0.5, generator=torch.Generator().manual_seed(7))
    again = block_mask((12, 12, 12), 4, (3, 4, 5), 0.5, generator=torch.Generator().manual_seed(7))
    other = block_mask((12, 12, 12), 4, (3, 4, 5), 0.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("kwargs, argument", [
    (dict(mask_ratio=0.0), "mask_ratio"), (dict(mask_ratio=1.0), "mask_ratio"), (dict(mask_ratio=-0.2), "mask_ratio"),
    (dict(block_size=0), "block_size"), (dict(block_size=(4, 4)), "block_size"),
    (dict(block_size=(4, 0, 4)), "block_size"),
    (dict(batch_size=0), "batch_size"),
])
def test_block_mask_rejects_bad_arguments_naming_them(kwargs, argument):
    arguments = dict(shape=(8, 8, 8), batch_size=2, block_size=2, mask_ratio=0.5) | kwargs
    with pytest.raises(ValueError, match=argument):
        block_mask(**arguments)


def test_block_mask_refuses_a_mask_that_hides_the_whole_patch():
    with pytest.raises(ValueError, match="at least one block must be masked and one visible"):
        block_mask((8, 8, 8), 1, 8, 0.6)


def test_apply_mask_zeroes_masked_voxels_only():
    x = torch.randn(2, 3, 8, 8, 8)
    mask = block_mask((8, 8, 8), 2, 2, 0.5)
    out = apply_mask(x, mask)
    assert (out[mask.expand_as(x)] == 0).all()
    assert torch.equal(out[~mask.expand_as(x)], x[~mask.expand_as(x)])


def test_apply_mask_fills_masked_voxels_with_a_learned_token_per_channel():
    x = torch.randn(2, 3, 8, 8, 8)
    mask = block_mask((8, 8, 8), 2, 2, 0.5)
    token = torch.nn.Parameter(torch.tensor([1.5, -2.0, 3.0]))
    out = apply_mask(x, mask, token)
    for c in range(3):
        assert (out[:, c][mask[:, 0]] == token[c]).all()
        assert torch.equal(out[:, c][~mask[:, 0]], x[:, c][~mask[:, 0]])
    out.sum().backward()
    assert torch.equal(token.grad, torch.full((3,), float(mask.sum())))


def test_apply_mask_rejects_a_token_of_the_wrong_length():
    with pytest.raises(ValueError, match="mask_token"):
        apply_mask(torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4, dtype=torch.bool), torch.zeros(3))


def _loss_inputs():
    torch.manual_seed(0)
    pred = torch.randn(2, 2, 6, 6, 6)
    target = torch.randn(2, 2, 6, 6, 6)
    mask = torch.zeros(2, 1, 6, 6, 6, dtype=torch.bool)
    mask[:, :, :3] = True
    brain = torch.zeros(2, 1, 6, 6, 6)
    brain[:, :, :, :4] = 1
    return pred, target, mask, brain


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_loss_ignores_unmasked_and_non_brain_voxels(kind):
    pred, target, mask, brain = _loss_inputs()
    reference = masked_reconstruction_loss(pred, target, mask, brain, kind)
    unmasked_brain = (1, 0, 4, 1, 1)          # inside the brain, not masked
    masked_outside = (0, 1, 1, 5, 2)          # masked, outside the brain
    masked_brain = (1, 1, 2, 2, 2)            # masked, inside the brain
    assert not mask[unmasked_brain[0], 0, unmasked_brain[2], unmasked_brain[3], unmasked_brain[4]]
    for index in (unmasked_brain, masked_outside):
        changed = pred.clone()
        changed[index] += 100.0
        assert masked_reconstruction_loss(changed, target, mask, brain, kind) == reference
    changed = pred.clone()
    changed[masked_brain] += 100.0
    assert masked_reconstruction_loss(changed, target, mask, brain, kind) > reference


def test_loss_weights_every_qualifying_voxel_equally_across_the_batch():
    pred = torch.zeros(2, 1, 2, 2, 2)
    target = torch.zeros(2, 1, 2, 2, 2)
    mask = torch.zeros(2, 1, 2, 2, 2, dtype=torch.bool)
    mask[0, 0, 0, 0, 0] = True                 # one voxel, error 1
    mask[1, 0, 0] = True                       # four voxels, error 0
    target[0, 0, 0, 0, 0] = 1.0
    loss = masked_reconstruction_loss(pred, target, mask)
    assert loss.item() == pytest.approx(1 / 5)  # not (1 + 0) / 2, the mean of per-sample means


def test_loss_with_a_negative_brain_label_counts_it_as_outside():
    pred, target, mask, _ = _loss_inputs()
    brain = -torch.ones(2, 1, 6, 6, 6)
    brain[:, :, :, :4] = 1
    _, _, _, brain01 = _loss_inputs()
    expected = masked_reconstruction_loss(pred, target, mask, brain01)
    assert masked_reconstruction_loss(pred, target, mask, brain) == expected


def test_loss_is_zero_with_a_gradient_when_no_voxel_qualifies():
    pred = torch.randn(1, 1, 4, 4, 4, requires_grad=True)
    mask = torch.ones(1, 1, 4, 4, 4, dtype=torch.bool)
    loss = masked_reconstruction_loss(pred, torch.randn(1, 1, 4, 4, 4), mask, torch.zeros(1, 1, 4, 4, 4))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_loss_matches_a_plain_mean_over_masked_voxels():
    pred, target, mask, _ = _loss_inputs()
    selected = mask.expand_as(pred)
    expected = ((pred - target)[selected] ** 2).mean()
    assert torch.allclose(masked_reconstruction_loss(pred, target, mask), expected)
    expected_l1 = (pred - target)[selected].abs().mean()
    assert torch.allclose(masked_reconstruction_loss(pred, target, mask, kind="l1"), expected_l1)


def test_loss_region_all_counts_every_voxel_and_masked_ignores_the_brain_mask():
    pred, target, mask, brain = _loss_inputs()
    everything = masked_reconstruction_loss(pred, target, mask, brain, region="all")
    assert torch.allclose(everything, ((pred - target) ** 2).mean())  # nn.MSELoss's mean over the whole tensor
    assert torch.allclose(masked_reconstruction_loss(pred, target, mask, brain, kind="l1", region="all"),
                          (pred - target).abs().mean())
    masked = masked_reconstruction_loss(pred, target, mask, brain, region="masked")
    assert torch.allclose(masked, ((pred - target)[mask.expand_as(pred)] ** 2).mean())
    inside = mask & (brain > 0)
    assert not torch.allclose(masked, masked_reconstruction_loss(pred, target, mask, brain))  # brain mask matters
    assert torch.allclose(masked_reconstruction_loss(pred, target, mask, brain),
                          ((pred - target)[inside.expand_as(pred)] ** 2).mean())
    with pytest.raises(ValueError, match="region must be one of masked_brain, masked, all"):
        masked_reconstruction_loss(pred, target, mask, brain, region="brain")


def test_loss_rejects_an_unknown_kind():
    pred, target, mask, _ = _loss_inputs()
    with pytest.raises(ValueError, match="kind"):
        masked_reconstruction_loss(pred, target, mask, kind="huber")


# ---- VICReg (Bardes, Ponce & LeCun 2022) on pooled features -----------------------------------------
def test_vicreg_invariance_is_zero_for_identical_views_and_their_mean_squared_difference_otherwise():
    z = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    assert vicreg_loss(z, z).invariance.item() == 0.0
    shifted = z + 0.5
    assert vicreg_loss(z, shifted).invariance.item() == pytest.approx(0.25)


def test_vicreg_variance_is_zero_when_every_dimension_has_std_at_least_one_and_positive_when_collapsed():
    spread = torch.tensor([[2.0, -3.0], [-2.0, 3.0], [2.0, 3.0], [-2.0, -3.0]])  # std 2.31 and 3.46
    assert vicreg_loss(spread, spread).variance.item() == 0.0
    collapsed = torch.ones(4, 2)  # every sample the same: std 0 in both dimensions, both branches
    assert vicreg_loss(collapsed, collapsed).variance.item() == pytest.approx(2 * (1 - 1e-2))
    half = spread * 0.25  # std 0.577 and 0.866: a hinge at 1, per dimension, averaged
    std = torch.sqrt(half.var(dim=0) + 1e-4)
    assert vicreg_loss(half, half).variance.item() == pytest.approx(2 * float((1 - std).mean()), rel=1e-6)


def test_vicreg_history_keeps_each_term_per_epoch_with_the_collapse_ceiling():
    from fomo_nnunet.ssl import vicreg_history

    logged = {"loss": [49.0, 30.0, 20.5], "invariance": [0.1, 0.2, 0.3], "variance": [1.9, 1.2], "covariance": [3, 2, 1]}
    record = vicreg_history(logged)
    assert record["epochs"] == 2 and record["variance_max"] == 2.0  # cut to the epochs every term has
    assert record["per_epoch"] == {"loss": [49.0, 30.0], "invariance": [0.1, 0.2], "variance": [1.9, 1.2],
                                   "covariance": [3.0, 2.0]}
    json.dumps(record, allow_nan=False)  # plain JSON for the checkpoint metadata
    with pytest.raises(ValueError, match="lacks the VICReg terms variance"):
        vicreg_history({k: v for k, v in logged.items() if k != "variance"})


def test_vicreg_covariance_is_zero_for_decorrelated_dimensions_and_counts_off_diagonal_entries():
    decorrelated = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # centred, orthogonal
    assert vicreg_loss(decorrelated, decorrelated).covariance.item() == 0.0
    correlated = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # variance 2, covariance 2
    # per branch: (2^2 + 2^2) / d = 4; two branches
    assert vicreg_loss(correlated, correlated).covariance.item() == pytest.approx(8.0)


def test_vicreg_loss_weights_its_terms_with_the_papers_defaults_or_the_given_coefficients():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 4, generator=g) * 0.3, torch.randn(6, 4, generator=g) * 0.3
    t = vicreg_loss(z1, z2)
    assert t.loss.item() == pytest.approx((25 * t.invariance + 25 * t.variance + t.covariance).item())
    custom = vicreg_loss(z1, z2, 1.0, 2.0, 3.0)
    assert custom.loss.item() == pytest.approx((t.invariance + 2 * t.variance + 3 * t.covariance).item())


def test_vicreg_refuses_one_sample_or_mismatched_shapes():
    with pytest.raises(ValueError, match="at least 2 samples"):
        vicreg_loss(torch.zeros(1, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="same shape"):
        vicreg_loss(torch.zeros(4, 4), torch.zeros(4, 3))


# ---- the decoder skip gate --------------------------------------------------------------------------
def _tiny_unet(seed: int = 0):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(seed)
    net = PlainConvUNet(input_channels=1, n_stages=3, features_per_stage=(4, 8, 16), conv_op=torch.nn.Conv3d,
                        kernel_sizes=3, strides=(1, 2, 2), n_conv_per_stage=1, num_classes=1,
                        n_conv_per_stage_decoder=1, conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU)
    return net.eval()


def _input(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_without_skips_the_decoder_output_ignores_the_skip_contents():
    net = _tiny_unet()
    skips = net.encoder(_input())
    noise = [torch.randn_like(s) for s in skips[:-1]] + [skips[-1]]
    assert not torch.equal(net.decoder(skips), net.decoder(noise))  # with skips, their contents matter
    SkipGate("none").attach(net.decoder)
    assert torch.equal(net.decoder(skips), net.decoder(noise))
    changed_bottleneck = skips[:-1] + [skips[-1] + 1]
    assert not torch.equal(net.decoder(skips), net.decoder(changed_bottleneck))


def test_all_skips_leave_the_output_bit_identical_and_capture_the_pooled_bottleneck():
    net, x = _tiny_unet(), _input()
    before = net(x)
    gate = SkipGate("all", capture=True).attach(net.decoder)
    assert torch.equal(net(x), before)
    assert torch.equal(gate.take_pooled(), net.encoder(x)[-1].mean(dim=(2, 3, 4)))
    gate.capture = False
    net(x)
    with pytest.raises(RuntimeError, match="no bottleneck captured"):
        gate.take_pooled()


def _dropped(seed: int, p: float = 0.5, batch: int = 4) -> torch.Tensor:
    net = _tiny_unet()
    SkipGate("drop", p, generator=torch.Generator().manual_seed(seed)).attach(net.decoder)
    return torch.stack([net(_input(batch)) for _ in range(3)])  # three draws of the stream


def test_skip_drop_is_reproducible_for_a_seed_and_differs_between_seeds():
    assert torch.equal(_dropped(3), _dropped(3))
    assert not torch.equal(_dropped(3), _dropped(4))


def test_skip_drop_at_probability_zero_is_all_and_at_one_is_none():
    net, x = _tiny_unet(), _input()
    every, = _dropped(0, p=0.0)[:1]
    assert torch.equal(every, net(x))
    SkipGate("none").attach(net.decoder)
    assert torch.equal(_dropped(0, p=1.0)[0], net(x))


def test_skip_drop_zeroes_whole_skips_per_sample():
    net = _tiny_unet()
    gate = SkipGate("drop", 0.5, generator=torch.Generator().manual_seed(0))
    skips = net.encoder(_input(64))
    gated, = gate(net.decoder, (skips,))
    for s, g in zip(skips[:-1], gated[:-1]):
        zeroed = (g == 0).flatten(1).all(1)
        kept = (g == s).flatten(1).all(1)
        assert (zeroed ^ kept).all() and 16 < int(zeroed.sum()) < 48  # about half of 64 samples
    assert gated[-1] is skips[-1]


def test_skip_drop_without_a_generator_is_a_clear_error():
    net = _tiny_unet()
    SkipGate("drop").attach(net.decoder)
    with pytest.raises(RuntimeError, match="seeded generator"):
        net(_input())


def test_skip_gate_pools_the_chosen_stages_concatenated_shallow_to_deep():
    """Hand-checked pools: stage 0 (2 channels), stage 1 (1 channel), bottleneck (1 channel), 2 samples."""
    s0 = torch.zeros(2, 2, 2, 2, 2)
    s0[0, 0] = 1.0           # sample 0, channel 0: mean 1
    s0[1, 1, 0] = 4.0        # sample 1, channel 1: half the voxels 4, mean 2
    s1 = torch.full((2, 1, 1, 1, 1), 3.0)
    s2 = torch.tensor([5.0, 7.0]).view(2, 1, 1, 1, 1)
    skips = [s0, s1, s2]

    def pooled(stages):
        gate = SkipGate("all", capture=True, stages=stages)
        gate(None, (skips,))
        return gate.take_pooled()

    assert torch.equal(pooled((-1,)), torch.tensor([[5.0], [7.0]]))  # the default: the bottleneck alone
    expected = torch.tensor([[1.0, 0.0, 5.0], [0.0, 2.0, 7.0]])      # stage 0's two channels, then the bottleneck
    assert torch.equal(pooled((-1, 0)), expected) and torch.equal(pooled((0, 2)), expected)
    assert torch.equal(pooled("all"), torch.tensor([[1.0, 0.0, 3.0, 5.0], [0.0, 2.0, 3.0, 7.0]]))
    with pytest.raises(ValueError, match=r"the encoder has 3 stages .* \[3\] do not exist"):
        pooled((0, 3))
    with pytest.raises(ValueError, match="names one stage twice"):
        pooled((2, -1))


def test_two_view_loss_weighs_reconstruction_and_vicreg_and_mae_weight_zero_leaves_vicreg_alone():
    """VICReg of z1 = [[0, 0], [2, 2]], z2 = [[1, 1], [1, 1]] by hand: invariance 1; variance hinge 0 for z1
    (std sqrt(2)) + (1 - sqrt(1e-4)) = 0.99 for z2; covariance (2^2 + 2^2) / 2 = 4 for z1, 0 for z2;
    25 * 1 + 25 * 0.99 + 4 = 53.75."""
    from fomo_nnunet.ssl.pretraining import two_view_loss
    from fomo_nnunet.ssl.recipe import MAEObjective

    pooled = torch.tensor([[0.0, 0.0], [2.0, 2.0], [1.0, 1.0], [1.0, 1.0]])
    reconstruction = torch.tensor(0.4, requires_grad=True)
    total, terms = two_view_loss(reconstruction, pooled, MAEObjective(vicreg_weight=0.5, mae_weight=2.0))
    assert terms["vicreg_losses"].item() == pytest.approx(53.75, rel=1e-6)
    assert total.item() == pytest.approx(2.0 * 0.4 + 0.5 * 53.75, rel=1e-6)
    alone, terms = two_view_loss(reconstruction, pooled, MAEObjective(vicreg_weight=0.5, mae_weight=0.0))
    assert alone.item() == pytest.approx(0.5 * 53.75, rel=1e-6) and terms["loss"] is reconstruction  # logged as is
    assert terms["vicreg_feature_variance"].item() == pytest.approx(0.99, rel=1e-6)  # no expander: the same hinge
    alone.backward()
    assert reconstruction.grad.item() == 0.0  # no gradient from the reconstruction term
    spread = torch.tensor([[0.0, 0.0], [2.0, 2.0], [0.0, 0.0], [2.0, 2.0]])  # the pools before an expander
    _, terms = two_view_loss(reconstruction, pooled, MAEObjective(vicreg_weight=0.5), spread)
    assert terms["vicreg_feature_variance"].item() == 0.0 and terms["vicreg_variance"].item() == pytest.approx(0.99)


def test_vicreg_expander_follows_the_papers_layers_and_the_gate_keeps_the_raw_pools_beside_its_output():
    from fomo_nnunet.ssl.pretraining import vicreg_expander

    expander = vicreg_expander(3, (8, 8, 5))
    kinds = [type(m).__name__ for m in expander]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert expander[0].in_features == 3 and expander[-1].out_features == 5 and expander[-1].bias is None
    skips = [torch.randn(4, 2, 2, 2, 2), torch.randn(4, 1, 1, 1, 1)]
    gate = SkipGate("all", capture=True, stages="all", expander=expander)
    gate(None, (skips,))
    raw = torch.cat([s.mean(dim=(2, 3, 4)) for s in skips], dim=1)
    assert torch.equal(gate.features, raw) and torch.allclose(gate.take_pooled(), expander(raw))


def test_objective_settings_record_the_vicreg_stages_and_the_reconstruction_weight():
    from fomo_nnunet.ssl.recipe import (TINY_MAE, TINY_VICREG_STAGES, VICREG_LOG_KEYS, objective_settings,
                                        with_objective)

    logged = {key: [1.0, 0.5] for key in VICREG_LOG_KEYS}
    default = objective_settings(with_objective(TINY_MAE, vicreg_weight=0.01), "float32", logged)
    assert default["mae_weight"] == 1.0 and default["vicreg"]["stages"] == [-1]
    assert default["vicreg"]["features"] == "global average pool of the bottleneck, no projector"
    alone = with_objective(TINY_VICREG_STAGES, mae_weight=0.0, vicreg_weight=1.0)
    settings = objective_settings(alone, "float32", logged)
    assert alone.objective.name == "vicreg" and settings["mae_weight"] == 0.0 and settings["vicreg"]["stages"] == "all"
    assert settings["vicreg"]["features"].startswith("global average pools of every encoder stage, concatenated")
    assert settings["vicreg"]["history"]["per_epoch"]["variance"] == [1.0, 0.5]
    assert settings["vicreg"]["history"]["per_epoch"]["feature_variance"] == [1.0, 0.5]
    assert "concatenated" in objective_settings(with_objective(alone, vicreg_stages=(1, -1)), "float32",
                                                logged)["vicreg"]["features"]
    expanded = objective_settings(with_objective(alone, vicreg_expander=(16, 8)), "float32", logged)["vicreg"]
    assert expanded["expander"] == [16, 8] and expanded["features"].endswith("then an expander 16-8 "
                                                                             "(Linear-BatchNorm-ReLU, last Linear)")


def test_mae_objective_refuses_no_loss_at_all_and_a_weight_without_a_vicreg_term():
    from fomo_nnunet.ssl.recipe import MAEObjective

    with pytest.raises(ValueError, match="mae_weight = 0 and vicreg_weight = 0 leave no loss"):
        MAEObjective(mae_weight=0.0)
    with pytest.raises(ValueError, match="leave mae_weight at 1"):
        MAEObjective(mae_weight=0.5)
    assert MAEObjective(vicreg_weight=1.0, mae_weight=0.0).name == "vicreg"


@pytest.mark.parametrize("mode, p, message", [("foo", 0.5, "'all', 'none', 'drop'"), ("drop", 1.5, "skip_drop_p"),
                                              ("drop", float("nan"), "skip_drop_p")])
def test_skip_gate_rejects_bad_settings_naming_the_allowed_values(mode, p, message):
    with pytest.raises(ValueError, match=message):
        SkipGate(mode, p)


@pytest.mark.parametrize("attribute, value, message", [
    ("decoder_skips", "foo", "decoder_skips must be one of 'all', 'none', 'drop'"),
    ("skip_drop_p", -0.1, "skip_drop_p"), ("vicreg_weight", -1.0, "vicreg_weight"),
    ("vicreg_weight", float("inf"), "vicreg_weight"), ("vicreg_coefficients", (25.0, 25.0), "vicreg_coefficients"),
    ("embedding_pooling", "mean", "embedding_pooling 'mean' is not one of 'deepest', 'stages'"),
    ("vicreg_pairs", "subjects", "vicreg_pairs must be one of views, sessions"),
    ("vicreg_pairs", "sessions", "set vicreg_weight > 0"),  # the default weight is 0: nothing to pair for
    ("session_p_other", 1.5, "session_p_other must be a probability"),
    ("loss_region", "brain", "loss_region must be one of masked_brain, masked, all"),
    ("mae_weight", -1.0, "mae_weight must be a finite number >= 0"),
    ("mae_weight", float("nan"), "mae_weight must be a finite number >= 0"),
    ("vicreg_stages", (0, 1), "set vicreg_weight > 0"),  # the default weight is 0: no VICReg term to feed
    ("vicreg_stages", (), "vicreg_stages must be 'all' or a non-empty tuple of distinct"),
    ("vicreg_stages", (1, 1), "vicreg_stages must be 'all' or a non-empty tuple of distinct"),
    ("vicreg_stages", "every", "vicreg_stages must be 'all' or a non-empty tuple of distinct"),
    ("vicreg_stages", (0.5,), "vicreg_stages must be 'all' or a non-empty tuple of distinct"),
    ("vicreg_expander", (0,), "vicreg_expander must be a tuple of layer widths >= 1"),
    ("vicreg_expander", 512, "vicreg_expander must be a tuple of layer widths >= 1"),
    ("vicreg_expander", (64,), "set vicreg_weight > 0"),
])
def test_mae_recipe_refuses_bad_objective_settings_where_it_is_made(attribute, value, message):
    from fomo_nnunet.ssl.recipe import MAEObjective, PretrainRecipe

    PretrainRecipe(objective=MAEObjective())  # the defaults pass
    with pytest.raises(ValueError, match=message):
        if attribute == "embedding_pooling":
            PretrainRecipe(embedding_pooling=value)
        else:
            MAEObjective(**{attribute: value})


# ---- session pairs (fomo_nnunet.ssl.sessions) ----------------------------------------------------
SUBJECTS = {"A/sub-01/ses-01": {"scans": {"a1_t1w": "t1w", "a1_flair": "flair"}},
            "A/sub-02/ses-01": {"scans": {"a2_t1w": "t1w", "a2_t2w": "t2w", "a2_flair": "flair"}},
            "B/sub-01/ses-01": {"scans": {"b1_t1w": "t1w"}}}


def test_session_partners_are_the_other_sequences_of_the_session_within_the_split():
    from fomo_nnunet.ssl.sessions import session_partners

    split = ["a1_t1w", "a1_flair", "a2_t1w", "a2_t2w", "b1_t1w", "unlisted"]  # a2_flair is in another split
    partners = session_partners(SUBJECTS, split)
    assert partners == {"a1_flair": ["a1_t1w"], "a1_t1w": ["a1_flair"], "a2_t1w": ["a2_t2w"], "a2_t2w": ["a2_t1w"],
                        "b1_t1w": [], "unlisted": []}
    with pytest.raises(ValueError, match="session 'x' has no 'scans' mapping"):
        session_partners({"x": {"subject": "sub-01"}}, split)


def test_read_subjects_names_the_file_and_what_is_wrong(tmp_path):
    from fomo_nnunet.ssl.sessions import read_subjects

    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(FileNotFoundError, match=r"subjects.json and .*raw/subjects.json: missing.*convert pretrain"):
        read_subjects(tmp_path, raw)
    (raw / "subjects.json").write_text(json.dumps({"only": {"scans": {}}}))
    assert read_subjects(tmp_path, raw) == {"only": {"scans": {}}}  # the first folder that has one
    (tmp_path / "subjects.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"subjects.json: not valid JSON"):
        read_subjects(tmp_path)
    (tmp_path / "subjects.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected an object of sessions, got list"):
        read_subjects(tmp_path)
    (tmp_path / "subjects.json").write_text(json.dumps(SUBJECTS))
    assert read_subjects(tmp_path) == SUBJECTS


class _KeyLoader:
    """A stand-in for nnU-Net's loader: draws keys with numpy as batchgenerators does; each sample's
    data is its key's index plus uniform noise (its "augmentation"), targets a list as the MAE's."""

    def __init__(self, keys, batch_size):
        self.indices, self.batch_size, self.threads = list(keys), batch_size, []

    def get_indices(self):
        return list(np.random.choice(self.indices, self.batch_size))

    def generate_train_batch(self):
        keys = self.get_indices()
        value = torch.tensor([float(self.indices.index(k)) for k in keys]).view(-1, 1, 1, 1, 1)
        data = value + torch.from_numpy(np.random.uniform(size=(len(keys), 1, 2, 2, 2))).float()
        return {"data": data, "target": [value.expand(-1, 1, 2, 2, 2), data.clone()], "keys": keys}

    def set_thread_id(self, thread_id):
        self.threads.append(thread_id)


def test_session_pair_loader_appends_one_partner_per_case_from_its_own_random_stream():
    from fomo_nnunet.ssl.sessions import SessionPairLoader, session_partners

    keys = ["a1_t1w", "a1_flair", "a2_t1w", "a2_t2w", "a2_flair", "b1_t1w"]
    partners = session_partners(SUBJECTS, keys)

    def batches(p_other, seed=0, n=20):
        np.random.seed(seed)
        loader = SessionPairLoader(_KeyLoader(keys, 3), partners, p_other)
        return [next(loader) for _ in range(n)]

    for batch in batches(1.0):
        first, second = batch["keys"][:3], batch["keys"][3:]
        assert batch["data"].shape == (6, 1, 2, 2, 2) and [t.shape[0] for t in batch["target"]] == [6, 6]
        for case, partner, other in zip(first, second, batch["fomo_other_sequence"].tolist()):
            # another sequence whenever the session has one (p_other 1); a single-scan session pairs with itself
            assert partner in partners[case] if partners[case] else partner == case
            assert other == (partner != case)
        assert not torch.equal(batch["data"][:3], batch["data"][3:])  # a partner is a crop of its own
    assert all(b["keys"][:3] == b["keys"][3:] for b in batches(0.0))  # p_other 0: second views of the cases
    mixed = torch.cat([b["fomo_other_sequence"] for b in batches(0.5, n=50)])
    assert 0.3 < mixed.float().mean() < 0.6  # 5 of 6 cases can pair across sequences, half the time
    a, b = batches(0.5, seed=3), batches(0.5, seed=3)
    assert all(x["keys"] == y["keys"] and torch.equal(x["data"], y["data"]) for x, y in zip(a, b))
    assert [x["keys"] for x in batches(0.5, seed=4)] != [x["keys"] for x in a]

    inner = _KeyLoader(keys, 2)
    loader = SessionPairLoader(inner, partners)
    next(loader)
    assert "get_indices" not in vars(inner)  # the partners' key list was for one call only
    loader.set_thread_id(1)
    loader.batch_size = 4  # attributes are the wrapped loader's, as the augmenters expect
    assert inner.threads == [1] and inner.batch_size == 4 and loader.indices == keys
    with pytest.raises(ValueError, match=r"p_other must be in \[0, 1\]"):
        SessionPairLoader(inner, partners, 1.5)


# ---- the AMAES recipe (nnUNetTrainerFomoMAE_amaes and its tiny budgets) ----------------------------------
@pytest.mark.parametrize("name", ["nnUNetTrainerFomoMAE_amaes", "nnUNetTrainerFomoMAE_tiny_amaes",
                                  "nnUNetTrainerFomoMAE_tiny_amaes_smoke"])
def test_amaes_variant_masks_60_percent_of_4_voxel_units_per_sample_and_counts_every_voxel(name):
    """Hand-checked on a 12^3 patch: 27 units of 4^3, floor(0.6 x 27) = round(0.6 x 27) = 16 masked in every
    sample (asparagus' count), each unit whole, drawn per sample; the loss a plain mean over every voxel."""
    from fomo_nnunet.trainers import nnUNetTrainerFomoMAE as module

    trainer = getattr(module, name)
    recipe, objective = trainer.recipe, trainer.recipe.objective
    assert (objective.block_size, objective.mask_ratio, objective.loss_region) == (4, 0.6, "all")
    assert (recipe.initial_lr, recipe.weight_decay, recipe.adamw_betas) == (1e-4, 3e-5, (0.9, 0.98))
    assert (recipe.warmup_fraction, objective.decoder_skips, objective.vicreg_weight) == (0.02, "none", 0.0)
    assert recipe.embedding_pooling == "deepest"  # ours pool every stage (nnUNetTrainerFomoMAE below)
    assert module.nnUNetTrainerFomoMAE.recipe.embedding_pooling == "stages"
    mask = block_mask((12, 12, 12), 3, objective.block_size, objective.mask_ratio,
                      generator=torch.Generator().manual_seed(0))
    units = _block_values(mask, (4, 4, 4))  # asserts every unit is masked whole
    assert units.shape == (3, 27) and units.sum(1).tolist() == [16, 16, 16]
    assert not torch.equal(units[0], units[1])  # drawn per sample
    # prediction 0; target 1 on visible voxels, 3 on masked ones; half the patch outside the brain (-1)
    target = torch.where(mask, 3.0, 1.0).expand(3, 2, 12, 12, 12).clone()  # two channels, one mask
    brain = torch.ones(3, 1, 12, 12, 12)
    brain[..., :6] = -1
    loss = trainer._build_loss(trainer)(torch.zeros_like(target), target, mask, brain)
    assert loss.item() == pytest.approx((11 * 1 + 16 * 9) / 27)  # every voxel, masked or not, brain or not
    default = module.nnUNetTrainerFomoMAE._build_loss(module.nnUNetTrainerFomoMAE)
    assert default(torch.zeros_like(target), target, mask, brain).item() == pytest.approx(9.0)  # ours: masked brain
    if name != "nnUNetTrainerFomoMAE_amaes":  # the tiny budgets keep AMAES' rate, not the tiny 3e-3
        assert recipe.num_epochs == getattr(module, "nnUNetTrainerFomoMAE_tiny" + name.removeprefix(
            "nnUNetTrainerFomoMAE_tiny_amaes")).recipe.num_epochs


def test_vicreg_hinge_floor_follows_the_rank_bound_and_the_trainer_line_advises_when_it_is_reached():
    """Batch 2 (rank 1) and 512 features: per branch 25 (1 - s) + s^4 (512 - 1) is smallest at
    s = (25 / 2044)^(1/3) = 0.2304, so the floor is 2 (1 - 0.2304) = 1.539; the paper's 2048 x 8192 has none."""
    from fomo_nnunet.ssl.losses import vicreg_hinge_floor
    from fomo_nnunet.ssl.pretraining import vicreg_floor_line
    from fomo_nnunet.ssl.recipe import MAEObjective

    assert vicreg_hinge_floor(512, 2) == pytest.approx(2 * (1 - (25 / 2044) ** (1 / 3)))
    assert vicreg_hinge_floor(8192, 2048) == 0.0 and vicreg_hinge_floor(4, 16) == 0.0  # D <= N - 1: no floor
    assert vicreg_hinge_floor(128, 16) < 0.2 < vicreg_hinge_floor(512, 16) < 1 < vicreg_hinge_floor(120, 2)
    assert vicreg_hinge_floor(512, 2, covariance_weight=0.0) == 0.0
    with pytest.raises(ValueError, match="a batch of at least 2"):
        vicreg_hinge_floor(512, 1)
    wide = MAEObjective(vicreg_weight=1.0, vicreg_expander=(64, 512))
    assert "at or above 1.54 (of 2): the features cannot spread at this batch" in vicreg_floor_line(None, wide, 2)
    assert vicreg_floor_line(None, replace(wide, vicreg_expander=(64, 8)), 16).endswith("at or above 0.00 (of 2)")
    assert vicreg_floor_line(None, MAEObjective(), 2) is None
