"""Checkpoints that say what they are: nnU-Net's checkpoint plus `fomo_metadata` (fomo_nnunet.models.transfer).

nnUNetTrainer.save_checkpoint writes the keys its `load_checkpoint` and predictor read. A pretraining
checkpoint must also tell a later finetuning how to rebuild the network and feed it, without the
plans at hand: `DescribedCheckpoints` adds `PretrainMetadata` (network class and arguments, patch,
spacing, normalisation, channels, the objective and its settings, how long it trained) to the
contents that PreemptibleRun writes (atomically, with the random streams).

Probe-ready embeddings: `corpus_embedding_stats` computes the per-dimension statistics of the
embedding (fomo_nnunet.models.embedding_stats) over the run's own preprocessed cases with the network as it
is; set as `embedding_stats`, every checkpoint written after that carries them in its fomo_metadata.
A pretraining trainer does that once, at the end, before checkpoint_final is written. The embedding's
pooling (`embedding_pooling`: "deepest" or "stages") is recorded in every checkpoint's fomo_metadata,
and the statistics are computed with it, so that `fomo-nnunet embed` pools as the statistics did.
"""
from __future__ import annotations

from fomo_nnunet import __version__
from fomo_nnunet.models.embedding_stats import (DEFAULT_POOLING, POOLING_KEY, STATS_KEY, EmbeddingStats, check_pooling,
                                         corpus_embedding_stats)
from fomo_nnunet.models.transfer import METADATA_KEY, PretrainMetadata, unwrap


class DescribedCheckpoints:
    """Mixin: checkpoints with `fomo_metadata`; the trainer names its `objective` and `objective_settings()`."""

    objective: str = ""
    channel_meaning: str = "any single MRI sequence, z-scored per scan over its non-zero region"
    embedding_stats: EmbeddingStats | None = None  # carried by every checkpoint written once it is set
    embedding_pooling: str = DEFAULT_POOLING  # fomo_nnunet.models.embedding_stats.POOLINGS; recorded in every checkpoint

    def objective_settings(self) -> dict:
        """How the objective was trained (masking, loss, optimiser, schedule ...), as JSON values."""
        raise NotImplementedError

    def fomo_metadata(self, epochs_completed: int) -> dict:
        cm = self.configuration_manager
        arch = self.plans_manager.plans["configurations"][self.configuration_name].get("architecture") or {}
        extra = {POOLING_KEY: check_pooling(self.embedding_pooling, "embedding_pooling")}
        if self.embedding_stats is not None:
            extra[STATS_KEY] = self.embedding_stats.to_dict()
        settings = {**self.objective_settings(), "batch_size": int(self.batch_size),
                    "use_mask_for_norm": list(cm.use_mask_for_norm), "seed": int(self.fomo_seed)}
        return PretrainMetadata(
            network_class=cm.network_arch_class_name,
            network_kwargs=arch.get("arch_kwargs", cm.network_arch_init_kwargs),
            arch_kwargs_requires_import=list(cm.network_arch_init_kwargs_req_import),
            patch_size=[int(p) for p in cm.patch_size],
            spacing=[float(s) for s in cm.spacing],
            normalization=list(cm.normalization_schemes),
            num_input_channels=int(self.num_input_channels),
            channel_meaning=[f"{v}: {self.channel_meaning}" for v in self.dataset_json["channel_names"].values()],
            objective=self.objective,
            objective_settings=settings,
            iterations_trained=int(epochs_completed * self.num_iterations_per_epoch),
            epochs_trained=int(epochs_completed),
            plans_name=self.plans_manager.plans_name,
            dataset_name=self.plans_manager.dataset_name,
            trainer_name=self.__class__.__name__,
            fomo_nnunet_version=__version__,
        ).to_dict() | extra

    def corpus_embedding_stats(self, max_cases: int) -> EmbeddingStats | None:
        """Embedding statistics of the network as it is over the run's training and validation cases (at
        most `max_cases`, fomo_nnunet.models.embedding_stats.select_cases), on rank 0; None on the other ranks,
        without checkpointing, or when it fails (the run's checkpoints are worth more: the log says why).

        Only rank 0 writes checkpoints; it runs the bare encoder (not the DDP wrapper, whose forward
        would wait for the other ranks), and no collective call follows, so the others need not wait."""
        if self.local_rank != 0 or self.disable_checkpointing or max_cases <= 0:
            return None
        try:
            train_keys, val_keys = self.do_split()
            stats = corpus_embedding_stats(unwrap(self.network).encoder, self.preprocessed_dataset_folder,
                                           self.configuration_manager.patch_size, [*train_keys, *val_keys],
                                           max_cases, self.device, pooling=self.embedding_pooling)
        except Exception as e:  # noqa: BLE001 - never lose checkpoint_final over the statistics
            self.print_to_log_file(f"WARNING: no embedding statistics ({type(e).__name__}: {e}); add them "
                                   f"later with `fomo-nnunet embedding-stats`")
            return None
        self.print_to_log_file(f"{stats.summary()} (pooling {self.embedding_pooling!r}); stored in the fomo_metadata "
                               f"of the checkpoints written from now on")
        return stats

    def checkpoint_contents(self) -> dict:
        """nnU-Net's keys (fomo_nnunet.training.preemption.PreemptibleRun, which writes them atomically)
        and the fomo_metadata."""
        return super().checkpoint_contents() | {METADATA_KEY: self.fomo_metadata(self.current_epoch + 1)}
