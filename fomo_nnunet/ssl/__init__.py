"""Self-supervised pieces in plain torch: masking and reconstruction losses."""
from fomo_nnunet.ssl.losses import masked_reconstruction_loss
from fomo_nnunet.ssl.masking import apply_mask, block_mask, masked_block_count

__all__ = ["apply_mask", "block_mask", "masked_block_count", "masked_reconstruction_loss"]
