"""Training under PyTorch's distributed launcher (`torchrun`), with nnU-Net's trainer as it is.

nnU-Net's own multi-GPU path (`nnUNetv2_train -num_gpus N`) starts its processes with
`torch.multiprocessing.spawn` on one node and hard-codes the NCCL backend, and its trainer puts
rank r on `cuda:r`, which is wrong on a second node (global rank 8 is GPU 0 there) and impossible on
a CPU. `torchrun` instead starts one process per GPU (or per CPU slot) on every node and hands each
its place in the environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; see
https://pytorch.org/docs/stable/elastic/run.html). `fomo-nnunet train` reads that environment,
opens the process group (NCCL on GPUs, Gloo on CPUs), selects this process's GPU by LOCAL_RANK and
then does exactly what nnU-Net's `run_ddp` does: build the trainer by name, load a checkpoint with
`--c`, train, validate. Without torchrun's variables it hands over to nnU-Net's `run_training`
unchanged (including `-num_gpus`).

What nnU-Net's trainer does under DDP stays: each rank trains on its share of the plans' batch size
(`_set_batch_size_and_oversample`), losses are gathered with `all_gather_object`, rank 0 writes the
log and the checkpoints. What our trainers add (fomo_nnunet.training.FomoTrainer): the right
device for the rank, and augmentation and mask streams of their own per rank (its seed).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class LaunchError(RuntimeError):
    """A distributed start that cannot work (missing variables, no GPU for a rank, unsupported trainer)."""


@dataclass(frozen=True)
class Place:
    """Where this process sits in a torchrun job."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int

    @property
    def multi_node(self) -> bool:
        return self.world_size > self.local_world_size


def torchrun_place(environ: dict | None = None) -> Place | None:
    """This process's place from torchrun's variables, or None when not started by torchrun."""
    env = os.environ if environ is None else environ
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    missing = [v for v in TORCHRUN_VARS if not env.get(v)]
    if missing:
        raise LaunchError(f"a distributed launch needs the variables {', '.join(TORCHRUN_VARS)}; "
                           f"{', '.join(missing)} not set (start with torchrun, or unset RANK/WORLD_SIZE)")
    try:
        rank, local, world = int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"])
        local_world = int(env.get("LOCAL_WORLD_SIZE") or world)
    except ValueError:
        raise LaunchError("RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE must be integers, got "
                           + ", ".join(f"{v}={env.get(v)!r}" for v in ("RANK", "LOCAL_RANK", "WORLD_SIZE",
                                                                    "LOCAL_WORLD_SIZE"))) from None
    if not (0 <= rank < world and 0 <= local < local_world):
        raise LaunchError(f"inconsistent torchrun place: RANK={rank} LOCAL_RANK={local} WORLD_SIZE={world} "
                           f"LOCAL_WORLD_SIZE={local_world}")
    return Place(rank, local, world, local_world)


def backend_for(device_type: str) -> str:
    """NCCL for CUDA tensors, Gloo for CPU tensors (the backends PyTorch recommends for each)."""
    return "nccl" if device_type == "cuda" else "gloo"


def ddp_device(requested):
    """The device of this rank for a trainer that was asked for `requested`: CPU stays CPU; CUDA is the
    GPU the launcher selected (torch.cuda.set_device by LOCAL_RANK, or by rank in nnU-Net's -num_gpus)."""
    import torch

    requested = torch.device(requested)
    if requested.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return requested


def from_all_ranks(value, distributed: bool) -> list:
    """`value` of every rank, in rank order (under DDP every rank must call this); [value] in one process."""
    if not distributed:
        return [value]
    import torch.distributed as dist

    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def init_process_group(place: Place, device_type: str) -> None:
    """Join the job's process group (env:// rendezvous: MASTER_ADDR/MASTER_PORT from torchrun)."""
    import torch
    import torch.distributed as dist

    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise LaunchError("-device cuda under torchrun, but this process sees no GPU (use -device cpu for Gloo)")
        if place.local_rank >= torch.cuda.device_count():
            raise LaunchError(f"LOCAL_RANK {place.local_rank} but only {torch.cuda.device_count()} GPU(s) visible: "
                               f"--nproc-per-node must not exceed the GPUs per node")
        torch.cuda.set_device(place.local_rank)
    dist.init_process_group(backend_for(device_type), init_method="env://", rank=place.rank,
                            world_size=place.world_size)


def check_trainer_supports(trainer_class, device_type: str, place: Place) -> None:
    """nnU-Net's own trainers put rank r on cuda:r: fine on one GPU node, wrong on CPU or a second node."""
    if getattr(trainer_class, "places_ranks_on_their_devices", False):  # fomo_nnunet.training.FomoTrainer
        return
    if device_type != "cuda" or place.multi_node:
        where = "on CPU" if device_type != "cuda" else "across nodes"
        raise LaunchError(f"{trainer_class.__name__} is not a fomo trainer: nnU-Net's trainers place rank r on "
                           f"cuda:r, which cannot work {where}. Use a fomo trainer (nnUNetTrainerFomo*) or a "
                           f"single GPU node")


def train_distributed(place: Place, dataset: str, configuration: str, fold, trainer_name: str, plans: str,
                      device_type: str = "cuda", continue_training: bool = False, only_validation: bool = False,
                      pretrained_weights: str | None = None, disable_checkpointing: bool = False,
                      export_probabilities: bool = False, val_with_best: bool = False):
    """nnU-Net's run_ddp for a torchrun process: returns the trainer (after training and validation)."""
    import torch
    import torch.distributed as dist
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from torch.backends import cudnn

    if continue_training and only_validation:
        raise LaunchError("--c and --val cannot be combined")
    if isinstance(fold, str) and fold != "all":
        fold = int(fold)
    check_trainer_supports(recursive_find_trainer_class_by_name(trainer_name), device_type, place)
    init_process_group(place, device_type)
    try:
        trainer = get_trainer_from_args(str(dataset), configuration, fold, trainer_name, plans, continue_training,
                                        device=torch.device(device_type))
        trainer.disable_checkpointing = disable_checkpointing
        maybe_load_checkpoint(trainer, continue_training, only_validation, pretrained_weights)
        if device_type == "cuda":
            cudnn.deterministic = False
            cudnn.benchmark = True
        if not only_validation:
            trainer.run_training()
        if val_with_best:
            trainer.load_checkpoint(join(trainer.output_folder, "checkpoint_best.pth"))
        trainer.perform_actual_validation(export_probabilities)
        dist.barrier()
        return trainer
    finally:
        dist.destroy_process_group()
