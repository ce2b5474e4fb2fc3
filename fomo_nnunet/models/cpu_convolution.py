"""3-D convolutions that take oneDNN's kernels on a CPU at any batch size.

PyTorch picks the CPU kernel of a float convolution by a size rule (`ConvParams::use_mkldnn` in
aten/src/ATen/native/Convolution.cpp, PyTorch 2.x): a 3x3x3 convolution on a batch of ONE whose
batch x channels x depth x height is at most 20480 runs the naive im2col kernel (`slow_conv3d`),
not oneDNN (formerly MKL-DNN). That is every sliding-window step of nnU-Net's predictor with a small
network, and the naive kernel is several times slower (docs/results/cpu-speed.md). Batches of two or more
already take oneDNN, so training is unchanged.

`use_onednn_convolutions(network)` turns every `nn.Conv3d` of a network into `OneDnnConv3d`, a
subclass that calls `torch.mkldnn_convolution` for float32 CPU tensors and is plain `nn.Conv3d`
elsewhere (CUDA, other dtypes, non-zero padding modes, string padding). The state dict, the
parameters and `isinstance(m, nn.Conv3d)` stay the same, so checkpoints load either way; outputs
agree with the naive kernel to float32 rounding (about 1e-6).

`for_this_machine(network)` does that and, on a machine without a GPU (no CUDA, no MPS), also stores
the network's 5-D weights channels-last (`torch.channels_last_3d`), the layout oneDNN computes in,
which shortens training steps and forward passes (docs/results/cpu-speed.md). Inputs may stay contiguous.
GPU machines keep nnU-Net's layout: nothing here was measured on one.
"""
from __future__ import annotations

import torch
from torch import nn


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


class OneDnnConv3d(nn.Conv3d):
    """nn.Conv3d that uses oneDNN on a CPU whatever the batch size (see the module's docstring)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        if (input.device.type == "cpu" and input.dtype == torch.float32 and weight.dtype == torch.float32
                and self.padding_mode == "zeros" and not isinstance(self.padding, str) and onednn_available()):
            return torch.mkldnn_convolution(input, weight, bias, self.padding, self.stride,
                                            self.dilation, self.groups)
        return super()._conv_forward(input, weight, bias)


def use_onednn_convolutions(network: nn.Module) -> int:
    """Make every plain `nn.Conv3d` of `network` a `OneDnnConv3d` in place; returns how many changed.

    Subclasses of nn.Conv3d are left alone (they may compute something else)."""
    changed = 0
    for module in network.modules():
        if type(module) is nn.Conv3d:
            module.__class__ = OneDnnConv3d
            changed += 1
    return changed


def cpu_only_machine() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def for_this_machine(network: nn.Module) -> nn.Module:
    """The network with oneDNN convolutions and, where no GPU exists, channels-last 5-D weights (in place)."""
    use_onednn_convolutions(network)
    if cpu_only_machine():
        network.to(memory_format=torch.channels_last_3d)
    return network
