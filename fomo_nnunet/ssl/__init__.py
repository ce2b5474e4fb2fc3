"""Self-supervised pieces in plain torch: masking, decoder skip gating and losses."""
from fomo_nnunet.ssl.losses import (LOSS_REGIONS, VICREG_TERM_NAMES, VICRegTerms, masked_reconstruction_loss,
                                   vicreg_history, vicreg_loss)
from fomo_nnunet.ssl.masking import apply_mask, block_mask, masked_block_count
from fomo_nnunet.ssl.skips import SKIP_MODES, SkipGate, check_skip_settings

__all__ = ["LOSS_REGIONS", "SKIP_MODES", "SkipGate", "VICRegTerms", "apply_mask", "block_mask", "check_skip_settings",
           "masked_block_count", "masked_reconstruction_loss", "VICREG_TERM_NAMES", "vicreg_history",
           "vicreg_loss"]
