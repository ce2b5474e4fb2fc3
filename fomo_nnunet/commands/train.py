"""`fomo-nnunet train`: nnUNetv2_train's arguments, also under torchrun (many GPUs, many nodes, CPU)."""
from __future__ import annotations

import argparse

from fomo_nnunet.exit_codes import TRAIN_TABLE

DESCRIPTION = """Train a model the way nnUNetv2_train does, with the same arguments. Started by torchrun (its
RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT are set), every process joins one process group:
NCCL with -device cuda (one GPU per process, chosen by LOCAL_RANK), Gloo with -device cpu. The plans'
batch size is split over the processes, each has its own augmentation and mask streams (from
FOMO_SEED and its rank), rank 0 alone writes the log and the checkpoints, and --c resumes from the
fold's latest checkpoint. Without torchrun this is nnUNetv2_train itself (-num_gpus included)."""

EPILOG = """examples:
  # one process, exactly nnUNetv2_train
  fomo-nnunet train 900 3d_fullres all -p fomoPretrainPlans -tr nnUNetTrainerFomoMAE
  # 8 GPUs on one node
  torchrun --standalone --nproc-per-node 8 -m fomo_nnunet.cli train 900 3d_fullres all \\
      -p fomoPretrainPlans -tr nnUNetTrainerFomoMAE
  # 4 nodes x 8 GPUs (run on every node; HOST is the first node)
  torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id mae900 \\
      -m fomo_nnunet.cli train 900 3d_fullres all -p fomoPretrainPlans -tr nnUNetTrainerFomoMAE
  # 2 CPU processes (Gloo), e.g. to test
  torchrun --standalone --nproc-per-node 2 -m fomo_nnunet.cli train 990 3d_fullres all \\
      -p fomoPretrainPlans -tr nnUNetTrainerFomoMAE_tiny_smoke -device cpu
  # resume (same command plus --c)

preemption (fomo trainers): a stop signal (FOMO_STOP_SIGNALS, default SIGTERM,SIGUSR1) ends the run after
its current step with checkpoint_latest.pth and preempted.json written; --c continues exactly there.
Checkpoints are written atomically and carry every random stream (docs/preemption.md, with a SLURM script).

""" + TRAIN_TABLE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="nnUNetv2_train, also under torchrun (multi-GPU, multi-node, CPU/Gloo)",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset_name_or_id", help="dataset name or ID")
    p.add_argument("configuration", help="configuration, e.g. 3d_fullres")
    p.add_argument("fold", help="fold (0-4 or all)")
    p.add_argument("-tr", default="nnUNetTrainer", help="trainer class (default: nnUNetTrainer)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-pretrained_weights", default=None, help="nnU-Net's -pretrained_weights (a checkpoint file)")
    p.add_argument("-num_gpus", type=int, default=1,
                   help="nnU-Net's own multi-GPU start on one node (not with torchrun, which sets the count)")
    p.add_argument("--npz", action="store_true", help="save softmax predictions of the final validation")
    p.add_argument("--c", action="store_true", help="continue from the fold's latest checkpoint")
    p.add_argument("--val", action="store_true", help="only run the final validation")
    p.add_argument("--val_best", action="store_true", help="validate with checkpoint_best.pth")
    p.add_argument("--disable_checkpointing", action="store_true", help="write no checkpoints")
    p.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"],
                   help="cuda (default; under torchrun one GPU per process, NCCL) or cpu (Gloo)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import multiprocessing
    import os

    from fomo_nnunet.distributed import LaunchError, torchrun_place

    try:
        place = torchrun_place()
    except LaunchError as e:
        raise SystemExit(f"error: {e}")
    if place is None:
        return _nnunet_train(args)
    if args.num_gpus != 1:
        raise SystemExit(f"error: -num_gpus {args.num_gpus} under torchrun: the process count is torchrun's "
                         f"--nnodes x --nproc-per-node ({place.world_size} here); drop -num_gpus")
    if args.device == "mps":
        raise SystemExit("error: -device mps has no distributed backend; use cuda (NCCL) or cpu (Gloo)")
    import torch

    from fomo_nnunet.distributed import train_distributed

    if args.device == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, multiprocessing.cpu_count() // place.local_world_size))
    elif args.device == "cuda":
        torch.set_num_threads(1)  # as nnUNetv2_train: threads do not help a GPU run
    try:
        train_distributed(place, args.dataset_name_or_id, args.configuration, args.fold, args.tr, args.p,
                          args.device, args.c, args.val, args.pretrained_weights, args.disable_checkpointing,
                          args.npz, args.val_best)
    except LaunchError as e:
        raise SystemExit(f"error (rank {place.rank}): {e}")
    return 0


def _nnunet_train(args: argparse.Namespace) -> int:
    import multiprocessing

    import torch
    from nnunetv2.run.run_training import run_training

    if args.device == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    elif args.device == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    run_training(args.dataset_name_or_id, args.configuration, args.fold, args.tr, args.p, args.pretrained_weights,
                 args.num_gpus, args.npz, args.c, args.val, args.disable_checkpointing, args.val_best,
                 device=torch.device(args.device))
    return 0
