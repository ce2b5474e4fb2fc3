"""The trainer base: what every fomo trainer is, folded into one class placed on nnU-Net's trainer.

`FomoTrainer` (with PreemptibleRun: stop signals as checkpoints, atomic checkpoints, mid-epoch resume):

- its recipe (`recipe`, a frozen dataclass of fomo_nnunet.training.recipes): nnU-Net's budget attributes are
  set from it after nnU-Net's `__init__`; every checkpoint carries it (`fomo_recipe`) and the fold folder has
  `recipe.json`, beside what the trainer adds (`run_record`);
- its seed (fomo_nnunet.seeding): it reaches the weight initialisation, the data loader and every augmentation
  worker; it is printed in the log, written to `seed.json` in the fold folder and stored in every checkpoint
  (`init_args["fomo_seed"]`, which nnU-Net saves and restores);
- its processes: nnU-Net's DDP code as it is, on any device and any node: under a process group the rank trains
  on the device the launcher chose (fomo_nnunet.distributed), not on `cuda:<rank>`.

It takes exactly nnU-Net's constructor arguments: nnU-Net reads the parameter names of the trainer's (most
derived) `__init__` to record its arguments in every checkpoint (`init_args`).
"""
from __future__ import annotations

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from torch.nn.parallel import DistributedDataParallel as DDP

from fomo_nnunet.distributed import ddp_device, from_all_ranks
from fomo_nnunet.io.atomic import write_json
from fomo_nnunet.training.preemption import PreemptibleRun, stop_signals
from fomo_nnunet.training.recipes import RECIPE_FILE, RECIPE_KEY, Budget, recipe_record
from fomo_nnunet.seeding import (DETERMINISTIC_ENV, SEED_ENV, derive_seed, deterministic_requested, environment,
                                 run_seed, seed_everything, seeded_augmenters, use_deterministic_algorithms,
                                 write_seed_record)


class FomoTrainer(PreemptibleRun, nnUNetTrainer):
    """nnU-Net's trainer with a recipe, a seed and DDP on any device (see the module)."""

    recipe: Budget = Budget()
    # what `fomo_nnunet.distributed` asks of a trainer before launching it on CPU or across nodes
    places_ranks_on_their_devices = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.recipe.apply(self)
        self.fomo_seed = run_seed()
        self.fomo_deterministic = deterministic_requested()
        # nnU-Net saves init_args in every checkpoint and only reads 'configuration' back from it
        self.my_init_kwargs["fomo_seed"] = self.fomo_seed
        # before nnU-Net builds the network (initialize(), at train start): the same weights for a seed
        seed_everything(derive_seed(self.fomo_seed, "init"))
        if self.is_ddp:  # the rank keeps the device it was given (CPU, or the GPU the launcher selected)
            self.device = ddp_device(self.my_init_kwargs["device"])
            if self.device.type != "cuda":
                self.grad_scaler = None  # mixed precision is for CUDA only, as in nnU-Net's single-process run

    # ---- the recipe, recorded --------------------------------------------------------------------
    def run_record(self) -> dict:
        """What this run is: the trainer and its recipe (trainers add theirs, e.g. whether it loads weights)."""
        return {"trainer": self.__class__.__name__, "recipe": recipe_record(self.recipe)}

    def checkpoint_contents(self) -> dict:
        return super().checkpoint_contents() | {RECIPE_KEY: self.run_record()}

    # ---- the seed ----------------------------------------------------------------------------------
    def stream_seed(self, stream: str) -> int:
        """The seed of a named random stream of this run on this process (DDP ranks differ)."""
        return derive_seed(self.fomo_seed, stream, self.local_rank)

    def get_dataloaders(self):
        """nnU-Net's loaders and transforms, fed by seeded workers in a fixed order (see seeded_augmenters)."""
        processes = get_allowed_n_proc_DA()
        with environment(nnUNet_n_proc_DA="0"):  # build the loaders in-process; the workers are ours
            single_tr, single_val = super().get_dataloaders()
        return self.seeded_augmenters(single_tr.data_loader, single_val.data_loader, processes)

    def seeded_augmenters(self, loader_tr, loader_val, processes: int):
        start_tr, start_val = self.batch_stream_starts()
        return seeded_augmenters(loader_tr, loader_val, processes, self.fomo_seed, self.local_rank,
                                 pin_memory=self.device.type == "cuda", start_tr=start_tr, start_val=start_val,
                                 ignore_signals=stop_signals())

    def batch_stream_starts(self) -> tuple[int, int]:
        """The numbers of the first training and validation batches this run draws: batch j of the training
        stream is step j of the run (epoch * iterations + step), so a run continued from a checkpoint
        (`resume_point`, set by PreemptibleRun.load_checkpoint) draws what an uninterrupted one would."""
        resume = getattr(self, "resume_point", None)
        step = resume.step if resume is not None else 0
        return (self.current_epoch * self.num_iterations_per_epoch + step,
                self.current_epoch * self.num_val_iterations_per_epoch)

    def on_train_start(self):
        if self.fomo_deterministic:
            use_deterministic_algorithms()  # after nnU-Net's run_training switched cuDNN autotuning on
        super().on_train_start()
        self.print_to_log_file(
            f"seed {self.fomo_seed} ({SEED_ENV}; weights, data order, augmentation workers and masks derive "
            f"from it); deterministic algorithms: {'on' if self.fomo_deterministic else 'off'} ({DETERMINISTIC_ENV})")
        if self.local_rank == 0:
            write_seed_record(self.output_folder, {
                "seed": self.fomo_seed, "env": SEED_ENV, "deterministic_algorithms": self.fomo_deterministic,
                "trainer": self.__class__.__name__, "augmentation_workers": int(get_allowed_n_proc_DA()),
                "seeded": ["weight initialisation", "training and validation batches (one seed per batch number)",
                           "mask and skip-drop streams (MAE)"]})
            write_json(self.run_record(), os.path.join(self.output_folder, RECIPE_FILE), durable=True)

    # ---- the processes: nnU-Net's DDP, the rank on its own device --------------------------------
    # nnU-Net's trainer, once a process group exists, sets its device to `cuda:<rank>` and wraps the network
    # with `device_ids=[rank]`: right for `-num_gpus` on one node, wrong on a CPU or on a second node (rank 8 is
    # GPU 0 there). Everything else is nnU-Net's: `local_rank` stays the global rank (rank 0 alone writes logs
    # and checkpoints), the batch is split over the ranks, losses are gathered (`from_all_ranks`).
    def initialize(self):
        if not self.is_ddp or self.was_initialized:
            return super().initialize()
        # nnU-Net's initialize without its DDP wrapping (device_ids=[rank]); the rest of it as it is
        self.is_ddp = False
        try:
            super().initialize()
        finally:
            self.is_ddp = True
        self._set_batch_size_and_oversample()  # this rank's share of the batch
        self.network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.network)
        self.network = DDP(self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.loss = self._build_loss()  # with the DDP settings (nnU-Net's batch Dice gathers across ranks)

    def from_all_ranks(self, value) -> list:
        """`value` of every rank, in rank order (under DDP every rank must call this); [value] in one process."""
        return from_all_ranks(value, self.is_ddp)
