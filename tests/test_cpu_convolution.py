"""oneDNN convolutions at batch 1 on a CPU (fomo_nnunet.models.cpu_convolution): same numbers, same state dict."""
from __future__ import annotations

import torch
from torch import nn

from fomo_nnunet.models.cpu_convolution import OneDnnConv3d, use_onednn_convolutions


def _pair(in_ch: int = 3, out_ch: int = 8, **kwargs):
    torch.manual_seed(0)
    plain = nn.Conv3d(in_ch, out_ch, 3, **kwargs)
    fast = nn.Conv3d(in_ch, out_ch, 3, **kwargs)
    fast.load_state_dict(plain.state_dict())
    assert use_onednn_convolutions(fast) == 1
    return plain, fast


def test_batch_of_one_matches_the_plain_convolution_forward_and_backward():
    for kwargs in ({"padding": 1}, {"padding": 1, "stride": 2}, {"padding": 0, "bias": False}):
        plain, fast = _pair(**kwargs)
        assert isinstance(fast, OneDnnConv3d) and isinstance(fast, nn.Conv3d)
        x = torch.randn(1, 3, 12, 10, 8)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = plain(xa), fast(xb)
        assert ya.shape == yb.shape
        torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-5)
        ya.square().sum().backward()
        yb.square().sum().backward()
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-3)


def test_a_network_keeps_its_state_dict_and_other_convolutions():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv3d(1, 4, 3, padding=1)
            self.b = nn.Sequential(nn.InstanceNorm3d(4), nn.Conv3d(4, 2, 1))
            self.c = nn.Conv3d(2, 2, 3, padding=1, padding_mode="reflect")  # falls back to nn.Conv3d's path
            self.t = nn.ConvTranspose3d(2, 2, 2, stride=2)

        def forward(self, x):
            return self.t(self.c(self.b(self.a(x))))

    torch.manual_seed(1)
    net = Net()
    keys = list(net.state_dict())
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        before = net(x)
        assert use_onednn_convolutions(net) == 3
        after = net(x)
    assert list(net.state_dict()) == keys
    assert type(net.t) is nn.ConvTranspose3d
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert use_onednn_convolutions(net) == 0  # already converted


def test_pretrained_architectures_are_built_with_it():
    from fomo_nnunet.models.checkpoints import metadata_from_preset
    from fomo_nnunet.models.transfer import PretrainMetadata

    net = PretrainMetadata.from_dict(metadata_from_preset("tiny")).build_network(num_outputs=1)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    assert convs and all(type(m) is OneDnnConv3d for m in convs)


def test_for_this_machine_keeps_the_numbers_and_on_a_cpu_stores_weights_channels_last():
    from fomo_nnunet.models.cpu_convolution import cpu_only_machine, for_this_machine

    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.LeakyReLU(),
                        nn.Conv3d(4, 3, 3, stride=2, padding=1))
    x = torch.randn(1, 2, 10, 12, 8)
    with torch.no_grad():
        before = net(x)
        assert for_this_machine(net) is net
        after = net(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert all(type(m) is OneDnnConv3d for m in net.modules() if isinstance(m, nn.Conv3d))
    if cpu_only_machine():
        assert net[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
        assert not net[0].weight.is_contiguous()
