"""Pretrained checkpoints: their metadata, loading them as data only, and moving their weights into
a task's network.

A checkpoint written by our trainers is nnU-Net's checkpoint dict plus a `fomo_metadata` entry (a
plain JSON dict, `PretrainMetadata.to_dict()`) that says how to rebuild the network and how its
inputs must be prepared. Weights move by parameter name in the layout of dynamic_network_architectures'
U-Nets (`encoder.*`, `decoder.*`, `decoder.seg_layers.*`); any model whose encoder is registered as
`encoder` (a U-Net, or `heads.EncoderClassifier`) can receive them.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from fomo_nnunet import __version__

METADATA_KEY = "fomo_metadata"
WEIGHTS_KEY = "network_weights"

# Parts of a network's state dict, by parameter name.
STEM = "stem"
ENCODER = "encoder"
DECODER = "decoder"
OUTPUT = "output"
OTHER = "other"
PARTS = (STEM, ENCODER, DECODER, OUTPUT, OTHER)

# Task-specific layers: never transferred, even where the shapes happen to match.
OUTPUT_PREFIXES = ("decoder.seg_layers.", "head.")
# PlainConvUNet has no stem module: its first convolution block plays that role.
_PLAIN_STEM_PREFIX = "encoder.stages.0.0.convs.0."
# Added by DistributedDataParallel and torch.compile around the real module.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A file is not a checkpoint we can read, or lacks what we need from it."""


class WeightTransferError(ValueError):
    """Pretrained weights do not fit the network they are loaded into."""


@dataclass
class PretrainMetadata:
    """What a pretrained checkpoint is: how to rebuild its network and how to feed it.

    `network_class` is a dotted path and `network_kwargs` the plans' arch_kwargs, with the entries
    named in `arch_kwargs_requires_import` given as dotted strings, exactly as in an nnU-Net plans file.
    """

    network_class: str
    network_kwargs: dict[str, Any]
    arch_kwargs_requires_import: list[str]
    patch_size: list[int]
    spacing: list[float]
    normalization: list[str]
    num_input_channels: int
    objective: str
    channel_meaning: list[str] = field(default_factory=list)
    objective_settings: dict[str, Any] = field(default_factory=dict)
    iterations_trained: int = 0
    epochs_trained: int = 0
    plans_name: str = ""
    dataset_name: str = ""
    trainer_name: str = ""
    fomo_nnunet_version: str = __version__

    def __post_init__(self) -> None:
        # Normalise to JSON types now (tuples -> lists), so that from_dict(to_dict(m)) == m.
        for f in fields(self):
            value = getattr(self, f.name)
            try:
                setattr(self, f.name, json.loads(json.dumps(value)))
            except (TypeError, ValueError) as e:
                raise ValueError(f"PretrainMetadata.{f.name} must hold JSON types only, got {value!r}") from e
        if not isinstance(self.network_class, str) or "." not in self.network_class:
            raise ValueError(f"network_class must be a dotted path such as "
                             f"'dynamic_network_architectures.architectures.unet.ResidualEncoderUNet', "
                             f"got {self.network_class!r}")
        if not isinstance(self.num_input_channels, int) or self.num_input_channels < 1:
            raise ValueError(f"num_input_channels must be a positive int, got {self.num_input_channels!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PretrainMetadata:
        """Read metadata written by `to_dict`; keys unknown to this version are ignored."""
        if not isinstance(data, Mapping):
            raise TypeError(f"metadata must be a dict, got {type(data).__name__}")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"pretraining metadata lacks the required keys {missing} "
                             f"(it has {sorted(data)})")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def build_network(self, num_outputs: int, input_channels: int | None = None,
                      deep_supervision: bool = False) -> nn.Module:
        """A freshly initialised network of the pretrained architecture."""
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        from fomo_nnunet.models.cpu_convolution import for_this_machine

        import inspect
        import pydoc

        # a network without deep supervision (Primus) takes no such argument
        takes_ds = "deep_supervision" in inspect.signature(pydoc.locate(self.network_class) or nn.Module).parameters
        network = get_network_from_plans(self.network_class, self.network_kwargs, self.arch_kwargs_requires_import,
                                         input_channels or self.num_input_channels, num_outputs, allow_init=True,
                                         deep_supervision=deep_supervision if takes_ds else None)
        return for_this_machine(network)  # oneDNN's kernels and layout on a CPU (fomo_nnunet.models.cpu_convolution)


def read_metadata(checkpoint: Mapping[str, Any], source: str = "the checkpoint") -> PretrainMetadata:
    """The `PretrainMetadata` stored in a loaded checkpoint dict."""
    if METADATA_KEY not in checkpoint:
        raise CheckpointError(f"{source} has no {METADATA_KEY!r} entry: it was not written by a fomo_nnunet "
                              f"pretraining trainer")
    return PretrainMetadata.from_dict(checkpoint[METADATA_KEY])


def _numpy_safe_globals() -> list:
    """numpy scalars and dtypes: nnU-Net logs losses and Dice scores as np.float32/np.float64."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    dtype_classes = [type(np.dtype(t)) for t in
                     (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                      np.uint64, np.float16, np.float32, np.float64)]
    # A file records the module path of the numpy that wrote it, which moved in numpy 2.
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
            np.dtype, *dtype_classes]


def load_torch_file_safely(path: str | Path) -> Any:
    """Whatever a torch file holds, loaded as data only (torch.load with weights_only=True), onto the CPU.

    Tensors, plain Python values and numpy scalars (nnU-Net logs those in 'logging' and '_best_ema') are
    allowed; a file that names anything else is refused before any of it is built, so nothing in it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            unsafe = []
        if unsafe:
            raise CheckpointError(f"{path} holds objects that are not plain data ({', '.join(unsafe)}); "
                                  f"checkpoints are only loaded with weights_only=True") from e
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated, or not written by "
                              f"torch.save): {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def load_checkpoint_safely(path: str | Path) -> dict[str, Any]:
    """An nnU-Net checkpoint (a dict with 'network_weights') loaded with `load_torch_file_safely`."""
    checkpoint = load_torch_file_safely(path)
    if not isinstance(checkpoint, dict) or WEIGHTS_KEY not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is not an nnU-Net checkpoint: it has no {WEIGHTS_KEY!r} (found {found})")
    return checkpoint


def strip_prefixes(name: str, prefixes: tuple[str, ...]) -> str:
    """`name` without any leading run of `prefixes` (in any order, repeated)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


def _canonical_name(name: str) -> str:
    """Strip wrapper prefixes; nnU-Net decoders keep a reference to the encoder, so `decoder.encoder.X`
    is the same tensor as `encoder.X`."""
    name = strip_prefixes(name, _WRAPPER_PREFIXES)
    if name.startswith("decoder.encoder."):
        name = name[len("decoder."):]
    return name


def _part_of(name: str, has_stem_module: bool) -> str:
    if name.startswith(OUTPUT_PREFIXES):
        return OUTPUT
    if name.startswith("encoder."):
        if name.startswith("encoder.stem.") or (not has_stem_module and name.startswith(_PLAIN_STEM_PREFIX)):
            return STEM
        return ENCODER
    if name.startswith("decoder."):
        return DECODER
    return OTHER


def split_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split a U-Net state dict into disjoint parts: 'stem', 'encoder' (the encoder without its stem),
    'decoder' (without output layers), 'output' (decoder.seg_layers.*, head.*) and 'other'.

    The stem is `encoder.stem.*` (ResidualEncoderUNet) or the first convolution block
    `encoder.stages.0.0.convs.0.*` (PlainConvUNet). `decoder.encoder.*` entries are filed under
    their `encoder.*` names, once.
    """
    has_stem_module = any(_canonical_name(k).startswith("encoder.stem.") for k in state_dict)
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in PARTS}
    for key, tensor in state_dict.items():
        name = _canonical_name(key)
        parts[_part_of(name, has_stem_module)].setdefault(name, tensor)
    return parts


@dataclass
class TransferReport:
    """What `transfer_weights` did to each tensor of the model (by canonical parameter name)."""

    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)   # name -> what was changed
    fresh: dict[str, str] = field(default_factory=dict)     # name -> why it kept its initialisation
    notes: list[str] = field(default_factory=list)          # details a person may want to check
    loaded_params: int = 0
    adapted_params: int = 0
    fresh_params: int = 0

    @property
    def n_loaded(self) -> int:
        return len(self.loaded)

    @property
    def n_adapted(self) -> int:
        return len(self.adapted)

    @property
    def n_fresh(self) -> int:
        return len(self.fresh)

    def summary(self) -> str:
        text = f"loaded {self.n_loaded} tensors ({_count(self.loaded_params)} params)"
        if self.adapted:
            text += f", adapted {self.n_adapted} ({'; '.join(self.adapted.values())})"
        if self.fresh:
            reasons: dict[str, int] = {}
            for reason in self.fresh.values():
                reasons[reason] = reasons.get(reason, 0) + 1
            why = ", ".join(f"{reason} {n}" for reason, n in reasons.items())
            text += f", fresh {self.n_fresh} ({_count(self.fresh_params)} params: {why})"
        return text


def _count(n: int) -> str:
    if n >= 100_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}K"
    return str(n)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel / DataParallel and torch.compile wrappers (any nesting):
    the module whose state dict has the plain parameter names."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _model_tensors(model: nn.Module) -> list[tuple[str, list[str], torch.Tensor]]:
    """(canonical name, all names, tensor) for each distinct tensor of the model's state dict.

    nnU-Net's conv blocks register each layer twice (`convs.0.conv` and `convs.0.all_modules.0`) and
    the decoder holds the encoder again, so one tensor appears under several names.
    """
    groups: dict[int, tuple[str, list[str], torch.Tensor]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        canonical = _canonical_name(name)
        groups.setdefault(id(tensor), (canonical, [], tensor))[1].append(canonical)
    return list(groups.values())


def _adapt_input_channels(source: torch.Tensor, target_shape: torch.Size) -> torch.Tensor | None:
    """A 1-input-channel convolution weight spread over C channels, or None where that does not fit.

    Repeating over channels and dividing by C keeps the response to C identical co-registered
    inputs equal to the single-channel response (the rule nnssl uses).
    """
    if (source.ndim < 3 or source.ndim != len(target_shape) or source.shape[1] != 1
            or source.shape[0] != target_shape[0] or source.shape[2:] != target_shape[2:]):
        return None
    channels = target_shape[1]
    return source.repeat(1, channels, *([1] * (source.ndim - 2))) / channels


def _shape_mismatch(name: str, source: torch.Tensor, target: torch.Tensor) -> str:
    return (f"parameter {name!r} has shape {tuple(source.shape)} in the checkpoint but "
            f"{tuple(target.shape)} in the model")


def _keep_fresh(report: TransferReport, name: str, tensor: torch.Tensor, reason: str,
                note: str | None = None) -> None:
    """Record that a model tensor keeps its initialisation, and why."""
    report.fresh[name] = reason
    report.fresh_params += tensor.numel()
    if note:
        report.notes.append(note)


def _load(report: TransferReport, copies: list[tuple[torch.Tensor, torch.Tensor]], name: str,
          tensor: torch.Tensor, value: torch.Tensor) -> None:
    """Plan copying a checkpoint tensor unchanged into a model tensor."""
    copies.append((tensor, value))
    report.loaded.append(name)
    report.loaded_params += tensor.numel()


def _encoder_problem(name: str, part: str, tensor: torch.Tensor, found: torch.Tensor | None) -> str:
    """Why an encoder tensor of the model cannot take the checkpoint's tensor."""
    if found is None:
        return f"encoder parameter {name!r} of the model is not in the checkpoint"
    problem = _shape_mismatch(name, found, tensor)
    if part == STEM and found.ndim >= 3 and found.shape[1] not in (1, tensor.shape[1]):
        problem += "; only a 1-channel input convolution can be adapted to several channels"
    return problem


def _plan_encoder_tensor(report: TransferReport, copies: list[tuple[torch.Tensor, torch.Tensor]], name: str,
                         part: str, tensor: torch.Tensor, found: torch.Tensor | None, strict: bool) -> None:
    """An encoder (or stem) tensor: copied, adapted from 1 input channel, refused (strict) or kept fresh."""
    if found is not None and found.shape == tensor.shape:
        _load(report, copies, name, tensor, found)
        return
    adapted = _adapt_input_channels(found, tensor.shape) if found is not None and part == STEM else None
    if adapted is not None:
        copies.append((tensor, adapted))
        report.adapted[name] = f"{part}: {found.shape[1]}->{tensor.shape[1]} channels"
        report.adapted_params += tensor.numel()
        return
    problem = _encoder_problem(name, part, tensor, found)
    if strict:
        raise WeightTransferError(problem)
    _keep_fresh(report, name, tensor, "encoder mismatch", problem)


def _plan_decoder_tensor(report: TransferReport, copies: list[tuple[torch.Tensor, torch.Tensor]], name: str,
                         tensor: torch.Tensor, found: torch.Tensor | None, load_decoder: bool) -> None:
    """A decoder tensor: copied where name and shape match (and the decoder is wanted), else kept fresh."""
    if not load_decoder:
        _keep_fresh(report, name, tensor, "decoder not loaded")
    elif found is None:
        _keep_fresh(report, name, tensor, "decoder not in checkpoint", f"decoder {name!r} is not in the checkpoint")
    elif found.shape != tensor.shape:
        _keep_fresh(report, name, tensor, "decoder mismatch", _shape_mismatch(name, found, tensor))
    else:
        _load(report, copies, name, tensor, found)


def _refuse_foreign_encoder(source: Mapping[str, torch.Tensor], model_encoder_names: set[str],
                            has_stem_module: bool) -> None:
    """Refuse a checkpoint whose encoder has tensors the model's encoder lacks."""
    unexpected = sorted(n for n in source if _part_of(n, has_stem_module) in (STEM, ENCODER)
                        and n not in model_encoder_names)
    if unexpected:
        raise WeightTransferError(
            f"the checkpoint's encoder has {len(unexpected)} tensors the model lacks (first: "
            f"{unexpected[0]!r}): the pretrained and the target encoders are different architectures")


def transfer_weights(model: nn.Module, pretrained_state: Mapping[str, torch.Tensor], load_decoder: bool = True,
                     strict_encoder: bool = True) -> TransferReport:
    """Copy pretrained weights into `model` in place and report what happened to every tensor.

    - encoder (stem included): every tensor is copied, and must be in the checkpoint with the same
      shape; a 1-channel input convolution is adapted to the model's C input channels (repeat, / C).
      Where that is impossible, `WeightTransferError` names the parameter and both shapes; with
      `strict_encoder=False` such tensors keep their initialisation instead, with a note.
    - decoder: copied where name and shape match (if `load_decoder`), otherwise left fresh with a note.
    - output layers (decoder.seg_layers.*, head.*) and anything else: never copied.
    Nothing is copied unless the whole transfer can go through.
    """
    model = unwrap(model)
    source: dict[str, torch.Tensor] = {}
    for name, tensor in pretrained_state.items():
        source.setdefault(_canonical_name(name), tensor)
    targets = _model_tensors(model)
    has_stem_module = any(name.startswith("encoder.stem.") for name, _, _ in targets)

    report = TransferReport()
    copies: list[tuple[torch.Tensor, torch.Tensor]] = []
    model_encoder_names: set[str] = set()
    for name, aliases, tensor in targets:
        part = _part_of(name, has_stem_module)
        found = next((source[a] for a in aliases if a in source), None)
        if part in (STEM, ENCODER):
            model_encoder_names.update(aliases)
            _plan_encoder_tensor(report, copies, name, part, tensor, found, strict_encoder)
        elif part == DECODER:
            _plan_decoder_tensor(report, copies, name, tensor, found, load_decoder)
        elif part == OUTPUT:
            _keep_fresh(report, name, tensor, "output layers")
        else:
            _keep_fresh(report, name, tensor, "not encoder or decoder")
    if strict_encoder:
        _refuse_foreign_encoder(source, model_encoder_names, has_stem_module)

    with torch.no_grad():
        for target, value in copies:
            target.copy_(value)
    return report


def transfer_from_checkpoint(model: nn.Module, path: str | Path, load_decoder: bool = True,
                             strict_encoder: bool = True) -> TransferReport:
    """`transfer_weights` from a checkpoint file, loaded with `load_checkpoint_safely`."""
    checkpoint = load_checkpoint_safely(path)
    try:
        return transfer_weights(model, checkpoint[WEIGHTS_KEY], load_decoder, strict_encoder)
    except WeightTransferError as e:
        raise WeightTransferError(f"{path}: {e}") from e
