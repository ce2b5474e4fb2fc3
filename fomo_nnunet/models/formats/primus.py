"""Primus (an EVA vision transformer on 8^3 patches; Wald et al. 2025, arXiv:2503.01835) from nnssl and
asparagus -> dynamic-network-architectures' Primus.

Three layouts hold the same transformer (`eva.*`: absolute position embedding `pos_embed`, blocks of
norm - attention with rotary position embedding (RoPE) - layer scale, norm - SwiGLU MLP - layer scale):
- nnssl's EvaMAE (the pretraining network of its Primus trainers): stem `down_projection.*`, a second
  transformer as decoder (`decoder.*`), `up_projection.*` after it, `mask_token`;
- gardening-tools' Primus (asparagus `primus_s/b/m/l/h/g`): stem `encoder.*`, the patch decoder
  `decoder.decode.*`, `mask_token`;
- dynamic-network-architectures' Primus (the target; also read as a source, unchanged):
  `down_projection.*`, `eva.*`, `up_projection.*`.

The first two flatten the patch grid into tokens as `(h w d)` (second spatial axis outermost),
dynamic-network-architectures as `(w h d)`. Loading their weights unchanged (what nnU-Net master's
Primus finetuning does) gives each token the position embedding and the rotary angles of the token at
the transposed position. The import makes it exact instead: the position embedding's first two grid
axes are transposed, and within each attention head the rotary channels of the first two axes are
swapped in the query and key projections (attention scores are unchanged by the same permutation of
query and key channels). Both are their own inverse, so export applies them again. Only cubic patch
grids (every published configuration: 160^3) are exact, and only they are accepted.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fomo_nnunet.models.formats.common import (InexactArchitectureError, Recognised, UnknownArchitectureError,
                                               count)

PRIMUS = "dynamic_network_architectures.architectures.primus.Primus"
# (embed_dim, depth) -> (name, attention heads): dynamic-network-architectures _PRIMUS_CONFIGS (S, B, M, L),
# asparagus modules/networks/primus.py (H, G, and primus_debug). Heads are not visible in the tensors.
SIZES = {(396, 12): ("Primus-S", 6), (792, 12): ("Primus-B", 12), (864, 16): ("Primus-M", 12),
         (1056, 24): ("Primus-L", 16), (1248, 32): ("Primus-H", 16), (1584, 32): ("Primus-G", 24),
         (24, 4): ("Primus-debug", 4)}   # asparagus primus_debug
MLP_RATIO = 4 * 2 / 3   # the SwiGLU hidden width every Primus preset uses

_EXACT = ("exact: the same EVA blocks (timm EvaBlock with RoPE, SwiGLU, layer scale, attention-output norm), "
          "patch embedding (Conv3d with kernel = stride = patch) and patch decoder in both packages; "
          "dynamic-network-architectures flattens tokens as (w h d) where the source flattens (h w d), which "
          "the import compensates exactly (see 'Adapted'); RoPE has no tensors: on in every published "
          "Primus, assumed on")
_USE = ("use here: inspection. Our finetuning trainers, heads and embeddings read a U-Net encoder's stages, "
        "which Primus does not have, so `plan transfer` refuses this checkpoint")
_MAE_DECODER = ("nnssl's EvaMAE reconstructs through a second transformer ('decoder.*') before its patch decoder "
                "('up_projection.*'); Primus decodes the encoder's tokens directly, so neither has a place (nnU-Net "
                "master's Primus finetuning loads the stem and encoder only): the finetuning decoder starts fresh")


def is_primus(t: Mapping[str, torch.Tensor]) -> bool:
    return "eva.pos_embed" in t and ("encoder.proj.weight" in t or "down_projection.proj.weight" in t)


def _token_swap(head_dim: int) -> torch.Tensor:
    """Channel order within one head that swaps the rotary channels of the first two grid axes (each
    axis owns a third of the head's channels, in axis order: timm RotaryEmbeddingCat)."""
    third = head_dim // 3
    order = torch.arange(head_dim)
    return torch.cat([order[third:2 * third], order[:third], order[2 * third:]])


def swap_adapter(grid: int, heads: int, embed_dim: int):
    """The adapter between (h w d) and (w h d) token order: its own inverse."""
    head_dim = embed_dim // heads
    within = _token_swap(head_dim)
    rows = torch.cat([within + h * head_dim for h in range(heads)])

    def adapt(name: str, tensor: torch.Tensor) -> tuple[torch.Tensor, str]:
        if name.endswith("pos_embed"):
            c = tensor.shape[-1]
            swapped = tensor.reshape(1, grid, grid, grid, c).transpose(1, 2).reshape(tensor.shape).contiguous()
            return swapped, "patch grid axes 0 and 1 transposed ((h w d) -> (w h d) token order)"
        if name.endswith(("attn.q_proj.weight", "attn.q_proj.bias", "attn.k_proj.weight", "attn.k_proj.bias")):
            return tensor[rows].contiguous(), ("per head, the rotary channels of grid axes 0 and 1 swapped (same "
                                               "attention scores under (w h d) token order)")
        return tensor, ""

    return adapt


def _size(embed_dim: int, depth: int) -> tuple[str, int]:
    if (embed_dim, depth) not in SIZES:
        raise UnknownArchitectureError(
            f"a Primus with width {embed_dim} and {depth} blocks is none of the published sizes "
            f"({', '.join(f'{n}: {e}/{d}' for (e, d), (n, _) in SIZES.items())}); the number of attention heads "
            f"is not in the tensors, so it cannot be rebuilt")
    return SIZES[(embed_dim, depth)]


def recognise(t: Mapping[str, torch.Tensor], fmt: str, patch: list[int], named: str | None = None) -> Recognised:
    """A Primus from nnssl (EvaMAE) or asparagus (gardening-tools Primus) -> dynamic-network-architectures'
    Primus for the pretraining patch `patch` (which fixes the position embedding's grid)."""
    dna_names = "down_projection.proj.weight" in t
    # dynamic-network-architectures' own Primus (a finetuned nnssl network): no transformer decoder
    dna_primus = dna_names and not any(k.startswith("decoder.") for k in t)
    nnssl_mae = dna_names and not dna_primus
    stem = "down_projection.proj" if dna_names else "encoder.proj"
    proj = t[f"{stem}.weight"]
    patch_embed = [int(p) for p in proj.shape[2:]]
    embed_dim = int(t["eva.pos_embed"].shape[-1])
    depth = count(t, "eva.blocks.{}.norm1.weight")
    name, heads = _size(embed_dim, depth)
    if any(k.startswith("register_tokens") for k in t):
        raise InexactArchitectureError("register tokens are not understood by this importer")
    if len(set(patch_embed)) != 1 or len(set(patch)) != 1:
        raise InexactArchitectureError(f"ViT patch {patch_embed} and pretraining patch {patch}: only cubic ones are "
                                       f"exact (token order, see fomo_nnunet.models.formats.primus)")
    grid = patch[0] // patch_embed[0]
    n_tokens = int(t["eva.pos_embed"].shape[1])
    if patch[0] % patch_embed[0] or grid ** 3 != n_tokens:
        side = round(n_tokens ** (1 / 3)) * patch_embed[0]
        raise InexactArchitectureError(f"the position embedding has {n_tokens} tokens ({side}^3 voxels in "
                                       f"{patch_embed[0]}^3 patches), not the {patch} patch given: pass --patch {side}")
    hidden = int(t["eva.blocks.0.mlp.fc1_g.weight"].shape[0]) if "eva.blocks.0.mlp.fc1_g.weight" in t else -1
    if hidden != int(embed_dim * MLP_RATIO):
        raise InexactArchitectureError(f"MLP width {hidden}: only Primus's SwiGLU of width "
                                       f"{int(embed_dim * MLP_RATIO)} is understood")
    kwargs: dict[str, Any] = {"embed_dim": embed_dim, "patch_embed_size": patch_embed, "eva_depth": depth,
                              "eva_numheads": heads, "input_shape": list(patch),
                              "scale_attn_inner": "eva.blocks.0.attn.norm.weight" in t,
                              "init_values": 0.1 if "eva.blocks.0.gamma_1" in t else None,
                              "drop_path_rate": 0.0, "patch_drop_rate": 0.0}
    assumptions = []
    if named and named.replace("Primus", "Primus-") != name.split(" ")[0]:
        assumptions.append(f"the checkpoint's plan names {named}; the tensors are {name} (width {embed_dim}, "
                           f"{depth} blocks): the tensors decide")

    def target_of(source: str) -> str | None:
        if source.startswith(f"{stem}."):
            return "down_projection." + source[len(stem) - len("proj"):]
        if source.startswith("eva."):
            return source
        if dna_primus and source.startswith("up_projection."):
            return source
        if not dna_names and source.startswith("decoder.decode."):
            return "up_projection." + source[len("decoder."):]
        if not nnssl_mae and source == "mask_token":
            return source
        return None

    source_name = ("nnssl EvaMAE" if nnssl_mae else "dynamic-network-architectures Primus" if dna_primus
                   else "asparagus / gardening-tools Primus")
    architecture = (f"{name} ({source_name}: width {embed_dim}, {depth} blocks, {heads} heads, "
                    f"ViT patch {patch_embed[0]}^3, input {patch[0]}^3)")
    decoder_prefixes = ("decoder.", "up_projection.", "mask_token") if dna_names else ("decoder.", "mask_token")
    out_layer = "up_projection.decode.2.weight" if dna_names else "decoder.decode.2.weight"
    num_outputs = int(t[out_layer].shape[1]) if out_layer in t and t[out_layer].ndim == 5 else 1
    return Recognised(fmt, architecture, PRIMUS, kwargs, int(proj.shape[1]), target_of, decoder_prefixes,
                      not nnssl_mae, _MAE_DECODER if nnssl_mae else "", [_EXACT, _USE], assumptions,
                      encoder_prefixes=(f"{stem}.", "eva."), target_encoder_prefixes=("down_projection.", "eva."),
                      adapt=None if dna_primus else swap_adapter(grid, heads, embed_dim), num_outputs=num_outputs,
                      patch_multiple=patch_embed)


def patch_from_tokens(t: Mapping[str, torch.Tensor]) -> int | None:
    """The cubic pretraining patch the position embedding was made for, or None."""
    stem = "down_projection.proj.weight" if "down_projection.proj.weight" in t else "encoder.proj.weight"
    side = round(int(t["eva.pos_embed"].shape[1]) ** (1 / 3))
    return side * int(t[stem].shape[2]) if side ** 3 == t["eva.pos_embed"].shape[1] else None

