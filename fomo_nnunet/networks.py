"""Network classes of our own, for architectures dynamic-network-architectures cannot express exactly.

Plans name them by their dotted path (`fomo_nnunet.networks.PlainConvUNetMaxPool`), which nnU-Net
resolves with pydoc.locate, so nnU-Net's trainers and predictor use them like any other network.
"""
from __future__ import annotations

from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder


class PlainConvUNetMaxPool(PlainConvUNet):
    """PlainConvUNet whose encoder halves the resolution with a max-pool before each deeper stage
    instead of a strided first convolution (the U-Net of AMAES and the FOMO25 baseline).

    Same arguments, state-dict layout (stage s > 0 holds the pool at index 0, so its convolutions sit
    at `encoder.stages.s.1.convs.*`), decoder, forward and initialisation as PlainConvUNet.
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage, conv_op, kernel_sizes, strides,
                 n_conv_per_stage, num_classes: int, n_conv_per_stage_decoder, conv_bias: bool = False,
                 norm_op=None, norm_op_kwargs: dict | None = None, dropout_op=None,
                 dropout_op_kwargs: dict | None = None, nonlin=None, nonlin_kwargs: dict | None = None,
                 deep_supervision: bool = False, nonlin_first: bool = False):
        # PlainConvUNet.__init__ would build a strided-convolution encoder first; build ours directly.
        AbstractDynamicNetworkArchitectures.__init__(self)
        self.key_to_encoder = "encoder.stages"
        self.key_to_stem = "encoder.stages.0"
        self.keys_to_in_proj = ("encoder.stages.0.0.convs.0.all_modules.0", "encoder.stages.0.0.convs.0.conv")
        if isinstance(n_conv_per_stage, int):
            n_conv_per_stage = [n_conv_per_stage] * n_stages
        if isinstance(n_conv_per_stage_decoder, int):
            n_conv_per_stage_decoder = [n_conv_per_stage_decoder] * (n_stages - 1)
        if len(n_conv_per_stage) != n_stages or len(n_conv_per_stage_decoder) != n_stages - 1:
            raise ValueError(f"n_conv_per_stage needs {n_stages} entries and n_conv_per_stage_decoder "
                             f"{n_stages - 1}, got {n_conv_per_stage} and {n_conv_per_stage_decoder}")
        self.encoder = PlainConvEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                                        n_conv_per_stage, conv_bias, norm_op, norm_op_kwargs, dropout_op,
                                        dropout_op_kwargs, nonlin, nonlin_kwargs, return_skips=True,
                                        nonlin_first=nonlin_first, pool="max")
        self.decoder = UNetDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision,
                                   nonlin_first=nonlin_first)
