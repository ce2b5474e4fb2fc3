import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from fomo_nnunet.models.heads import EncoderClassifier, PoolingHead, encoder_stage_widths

WIDTHS = [4, 8, 16]


def tiny_encoder(cls=ResidualEncoderUNet, input_channels=1) -> nn.Module:
    torch.manual_seed(0)
    depth = dict(n_blocks_per_stage=(1, 2, 2)) if cls is ResidualEncoderUNet else dict(n_conv_per_stage=2)
    net = cls(input_channels=input_channels, n_stages=3, features_per_stage=WIDTHS, conv_op=nn.Conv3d,
              kernel_sizes=3, strides=(1, 2, 2), num_classes=2, n_conv_per_stage_decoder=1, conv_bias=True,
              norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
              nonlin_kwargs={"inplace": True}, **depth)
    return net.encoder


def stage_maps(batch: int = 2) -> list[torch.Tensor]:
    return [torch.randn(batch, w, s, s, s) for w, s in zip(WIDTHS, (16, 8, 4))]


def test_encoder_stage_widths_reads_both_encoders_and_unets():
    assert encoder_stage_widths(tiny_encoder(ResidualEncoderUNet)) == WIDTHS
    assert encoder_stage_widths(tiny_encoder(PlainConvUNet)) == WIDTHS
    with pytest.raises(TypeError, match="output_channels"):
        encoder_stage_widths(nn.Linear(2, 2))


def test_head_on_the_deepest_stage_gives_one_row_per_sample():
    head = PoolingHead(WIDTHS, num_outputs=3, hidden=8)
    assert head.in_features == 16
    assert head(stage_maps(batch=2)).shape == (2, 3)


def test_head_on_several_stages_concatenates_their_pooled_features():
    head = PoolingHead(WIDTHS, num_outputs=1, stages=(0, -1), hidden=8).eval()
    maps = stage_maps(batch=3)
    pooled = head.pool(maps)
    assert pooled.shape == (3, 4 + 16)
    assert torch.allclose(pooled[:, :4], maps[0].mean(dim=(2, 3, 4)))
    assert torch.allclose(pooled[:, 4:], maps[2].mean(dim=(2, 3, 4)))
    assert head(maps).shape == (3, 1)


def test_avgmax_pooling_keeps_a_focal_spike_that_the_average_dilutes():
    head = PoolingHead(WIDTHS, num_outputs=1, stages=(0, -1), hidden=8, pooling="avgmax").eval()
    assert head.in_features == 2 * (4 + 16)
    maps = [torch.zeros(2, w, s, s, s) for w, s in zip(WIDTHS, (16, 8, 4))]
    maps[0][1, 0, 3, 3, 3] = 8.0  # one voxel of one channel in the second sample: a focal finding
    pooled = head.pool(maps)
    assert pooled.shape == (2, 40)
    avg, mx = pooled[:, :4], pooled[:, 4:8]  # stage 0: average then maximum
    assert avg[1, 0] == pytest.approx(8.0 / 16**3) and mx[1, 0] == 8.0 and mx[0, 0] == 0.0
    with pytest.raises(ValueError, match="pooling"):
        PoolingHead(WIDTHS, 1, pooling="median")


@pytest.mark.parametrize("stages", [(3,), (-4,), (), (1, -2)])
def test_head_rejects_stages_the_encoder_does_not_have(stages):
    with pytest.raises(ValueError, match="stage"):
        PoolingHead(WIDTHS, 1, stages=stages)


@pytest.mark.parametrize("cls", [ResidualEncoderUNet, PlainConvUNet])
def test_classifier_maps_a_volume_to_outputs(cls):
    model = EncoderClassifier(tiny_encoder(cls, input_channels=2), PoolingHead(WIDTHS, 2, stages=(1, 2), hidden=8))
    out = model(torch.randn(2, 2, 16, 16, 16))
    assert out.shape == (2, 2)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_classifier_asks_a_standalone_encoder_for_all_stages():
    encoder = tiny_encoder()
    encoder.return_skips = False
    model = EncoderClassifier(encoder, PoolingHead(WIDTHS, 1, stages=(0,), hidden=8))
    assert model(torch.randn(1, 1, 16, 16, 16)).shape == (1, 1)


def test_embed_is_the_pooled_deepest_stage():
    model = EncoderClassifier(tiny_encoder(), PoolingHead(WIDTHS, 5, hidden=8)).eval()
    x = torch.randn(3, 1, 16, 16, 16)
    with torch.no_grad():
        embedding = model.embed(x)
        deepest = model.encoder(x)[-1]
    assert embedding.shape == (3, 16)
    assert torch.allclose(embedding, deepest.mean(dim=(2, 3, 4)))


def test_classifier_rejects_a_head_built_for_other_widths():
    with pytest.raises(ValueError, match=r"\[4, 8, 32\].*\[4, 8, 16\]"):
        EncoderClassifier(tiny_encoder(), PoolingHead([4, 8, 32], 1))


def test_input_statistics_standardise_the_pooled_features_and_travel_with_the_weights():
    torch.manual_seed(0)
    head = PoolingHead([4, 8], 1, stages=(-1,), hidden=8, dropout=0.0)
    # features that barely vary between cases (sd 0.01 around 5), one of them constant
    maps = [[torch.randn(1, 4, 2, 2, 2), 5 + 0.01 * torch.randn(1, 8, 2, 2, 2)] for _ in range(20)]
    for m in maps:
        m[1][:, 0] = 3.0
    pooled = torch.cat([head.pool(m) for m in maps])
    before = torch.cat([head(m) for m in maps])
    summary = head.set_input_statistics(pooled)
    assert summary["cases"] == 20 and summary["floored"] == 1  # the constant feature is not divided by ~0
    standardised = (pooled - head.input_shift) / head.input_scale
    torch.testing.assert_close(standardised[:, 1:].std(0), torch.ones(7), rtol=1e-4, atol=1e-4)
    assert standardised[:, 0].abs().max() < 1e-3
    after = torch.cat([head(m) for m in maps])
    assert after.std() > 10 * before.std()  # the MLP now sees the differences between cases
    # saved and loaded with the weights; weights from before the buffers existed load as the identity
    fresh = PoolingHead([4, 8], 1, stages=(-1,), hidden=8, dropout=0.0)
    fresh.load_state_dict(head.state_dict())
    torch.testing.assert_close(torch.cat([fresh(m) for m in maps]), after)
    old = {k: v for k, v in head.state_dict().items() if not k.startswith("input_")}
    fresh.load_state_dict(old)
    assert torch.equal(fresh.input_shift, torch.zeros(8)) and torch.equal(fresh.input_scale, torch.ones(8))
    with pytest.raises(ValueError, match="N >= 2"):
        head.set_input_statistics(pooled[:1])
