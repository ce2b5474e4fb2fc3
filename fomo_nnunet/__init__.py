"""fomo_nnunet: an nnU-Net v2 plugin for brain-MRI foundation models (FOMO26)."""
__version__ = "0.1.0"
