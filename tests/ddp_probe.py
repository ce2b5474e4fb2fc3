"""Started by torchrun from tests/test_distributed.py: one rank of `fomo-nnunet train`'s distributed
path (fomo_nnunet.distributed.train_distributed), then what this rank holds is saved for the test.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_probe.py OUT DATASET CONFIG FOLD
        TRAINER PLANS [--c]
"""
import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from fomo_nnunet.distributed import torchrun_place, train_distributed


def main() -> None:
    out, dataset, configuration, fold, trainer_name, plans, *flags = sys.argv[1:]
    place = torchrun_place()
    trainer = train_distributed(place, dataset, configuration, fold, trainer_name, plans, "cpu",
                                continue_training="--c" in flags)
    mask = getattr(trainer, "_mask_generator", None)
    net = trainer.network
    torch.save({"rank": place.rank, "wrapped": isinstance(net, DistributedDataParallel),
                "weights": (net.module if isinstance(net, DistributedDataParallel) else net).state_dict(),
                "logging": trainer.logger.get_checkpoint(), "batch_size": trainer.batch_size,
                "device": str(trainer.device), "is_ddp": trainer.is_ddp,
                "mask_stream": None if mask is None else mask.get_state()},
               f"{out}/rank{place.rank}.pt")


if __name__ == "__main__":
    main()
