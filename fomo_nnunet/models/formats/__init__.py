"""Checkpoints of other frameworks, one module per foreign format.

`fomo_nnunet.models.checkpoint_import` reads a file, recognises its network and maps its tensors; the modules
here hold what is particular to one framework: `nnssl` (the OpenMind models: adaptation plan, ResEnc
U-Net in dynamic-network-architectures' own names), `primus` (Primus transformers from nnssl and
asparagus), `asparagus_config` (the Hydra config an asparagus run writes beside its checkpoints) and
`export` (our checkpoints written in asparagus's and nnssl's form).
"""
