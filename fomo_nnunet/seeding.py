"""One seed per training run, and every random stream of the run derived from it.

nnU-Net seeds nothing: weights, patch sampling and each augmentation worker draw from whatever
state the process has, and its NonDetMultiThreadedAugmenter hands batches over in the order the
workers finish. Our trainers instead read one run seed (`FOMO_SEED`, default 0, recorded in the
fold folder and the checkpoints) and derive from it, per named stream, the seeds of:

- the weight initialisation (torch, numpy and Python's `random` in the main process),
- every augmentation worker (numpy, torch and `random` inside the worker; worker i of rank r),
- the MAE mask stream (per DDP rank),
- the main process's data stream when no workers are used (`nnUNet_n_proc_DA=0`).

Batches from workers come back in a fixed round-robin order (batchgenerators'
MultiThreadedAugmenter), so on a CPU the same seed and the same `nnUNet_n_proc_DA` give the same
losses and predictions bit for bit. On a GPU cuDNN picks convolution algorithms by timing them
(nnU-Net turns `cudnn.benchmark` on) and some kernels use atomics, so runs differ in the last bits
and drift apart; `FOMO_DETERMINISTIC=1` opts into deterministic algorithms (slower), the way
PyTorch documents it (https://pytorch.org/docs/stable/notes/randomness.html).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import zlib

import numpy as np

SEED_ENV = "FOMO_SEED"
DETERMINISTIC_ENV = "FOMO_DETERMINISTIC"
DEFAULT_SEED = 0
SEED_FILE = "seed.json"


def run_seed(environ: dict | None = None) -> int:
    """The run's seed from `FOMO_SEED` (default 0); a value that is not a non-negative integer is an error."""
    env = os.environ if environ is None else environ
    raw = env.get(SEED_ENV, "")
    if raw.strip() == "":
        return DEFAULT_SEED
    try:
        seed = int(raw)
    except ValueError:
        raise ValueError(f"{SEED_ENV}={raw!r} is not an integer seed (expected e.g. {SEED_ENV}=0)") from None
    if seed < 0 or seed >= 2**32:
        raise ValueError(f"{SEED_ENV}={seed} is out of range (0 <= seed < 2**32)")
    return seed


def deterministic_requested(environ: dict | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(DETERMINISTIC_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def derive_seed(seed: int, stream: str, *index: int) -> int:
    """A 32-bit seed for one named stream of a run (and an index: worker, rank), stable across Python
    versions and processes (no `hash()`): numpy's SeedSequence over (seed, crc32(stream), *index)."""
    key = [int(seed), zlib.crc32(stream.encode()), *map(int, index)]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, numpy's global state and torch (all devices) in this process."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_deterministic_algorithms() -> None:
    """PyTorch's opt-in for reproducible GPU runs: deterministic kernels, no cuDNN autotuning."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def write_seed_record(folder: str, record: dict) -> None:
    """seed.json in the fold folder: the seed and what it seeded (read by people and by the benchmark)."""
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, SEED_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, os.path.join(folder, SEED_FILE))


@contextlib.contextmanager
def environment(**values: str):
    """Set environment variables for the duration of a block (restored afterwards)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class LoaderProxy:
    """A batchgenerators data loader wrapped: every attribute not defined by a subclass is the wrapped
    loader's, so the augmenters use the proxy as they use nnU-Net's loader (and proxies nest)."""

    def __init__(self, loader):
        self._loader = loader

    def set_thread_id(self, thread_id: int) -> None:
        self._loader.set_thread_id(thread_id)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._loader)

    def __getattr__(self, name):
        if name.startswith("_"):  # not found on the proxy itself (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self._loader, name)

    def __setattr__(self, name, value):
        # the augmenter resets flags such as `was_initialized` on the loader it was given
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._loader, name, value)


class SeededWorkerLoader(LoaderProxy):
    """A batchgenerators data loader whose copy in worker i seeds numpy, torch and `random` with seeds[i].

    batchgenerators' MultiThreadedAugmenter seeds only numpy in its workers and then calls
    `set_thread_id(i)` on the worker's copy of the loader; that call is where torch and `random`
    get their seeds too (augmentations draw from torch as well as numpy).
    """

    def __init__(self, loader, seeds: list[int]):
        super().__init__(loader)
        self._seeds = list(seeds)

    def set_thread_id(self, thread_id: int) -> None:
        import torch
        from threadpoolctl import threadpool_limits

        # a forked worker must not use the parent's OpenMP pool (it hangs in the first torch op), and
        # several single-threaded workers beat one multi-threaded one, as nnU-Net's own workers do
        torch.set_num_threads(1)
        threadpool_limits(1)
        seed = self._seeds[thread_id]
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self._loader.set_thread_id(thread_id)


def seeded_augmenters(loader_tr, loader_val, num_processes: int, seed: int, rank: int = 0,
                      pin_memory: bool = False):
    """Training and validation batch streams that are a function of `seed` (and the worker count).

    num_processes == 0: both loaders run in this process, which is reseeded for the data stream here
    (so a pretrained run and its scratch twin see the same batches whatever their initialisation
    drew). Otherwise a MultiThreadedAugmenter per loader with one derived seed per worker, read in a
    fixed round-robin order. Both are started (the first batch is drawn), as nnU-Net does.
    """
    from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

    if num_processes == 0:
        seed_everything(derive_seed(seed, "data", rank))
        tr, val = SingleThreadedAugmenter(loader_tr, None), SingleThreadedAugmenter(loader_val, None)
    else:
        n_val = max(1, num_processes // 2)
        seeds_tr = [derive_seed(seed, "worker_tr", rank, i) for i in range(num_processes)]
        seeds_val = [derive_seed(seed, "worker_val", rank, i) for i in range(n_val)]
        tr = MultiThreadedAugmenter(SeededWorkerLoader(loader_tr, seeds_tr), None, num_processes,
                                    max(2, 6 // num_processes), seeds_tr, pin_memory, wait_time=0.002)
        val = MultiThreadedAugmenter(SeededWorkerLoader(loader_val, seeds_val), None, n_val, 2, seeds_val,
                                     pin_memory, wait_time=0.002)
    _ = next(tr), next(val)
    return tr, val
