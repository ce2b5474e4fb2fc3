"""One seed per training run, and every random stream of the run derived from it.

nnU-Net seeds nothing: weights, patch sampling and each augmentation worker draw from whatever
state the process has, and its NonDetMultiThreadedAugmenter hands batches over in the order the
workers finish. Our trainers instead read one run seed (`FOMO_SEED`, default 0, recorded in the
fold folder and the checkpoints) and derive from it, per named stream, the seeds of:

- the weight initialisation (torch, numpy and Python's `random` in the main process),
- every training and validation batch: batch j of a stream is drawn with numpy, torch and `random`
  seeded for (seed, stream, rank, j), in whichever augmentation worker or in the main process
  (`nnUNet_n_proc_DA=0`, without touching the main process's own random state), so a stream can
  restart at any batch and a resumed run continues exactly (fomo_nnunet.training.preemption),
- the MAE mask and skip-drop streams (per DDP rank; their generator states travel in checkpoints).

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
    from fomo_nnunet.io.atomic import write_text

    os.makedirs(folder, exist_ok=True)
    write_text(json.dumps(record, indent=1), os.path.join(folder, SEED_FILE))


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


class BatchSeededLoader(LoaderProxy):
    """A batchgenerators data loader whose batch number j is drawn with numpy, torch and `random` seeded
    from (run seed, stream, rank, j): a batch is a function of its number alone, so a stream can be
    restarted at any batch (a resumed run continues where it stopped, mid-epoch included).

    In worker i of n (batchgenerators' MultiThreadedAugmenter calls `set_thread_id(i)` on the worker's
    copy, and reads the workers round-robin) the worker draws batches start + i, start + i + n, ...; in
    the main process (`isolated`) the process's own random state is set aside while a batch is drawn.
    """

    def __init__(self, loader, seed: int, stream: str, rank: int = 0, start: int = 0, num_workers: int = 1,
                 isolated: bool = False, ignore_signals: tuple[int, ...] = ()):
        super().__init__(loader)
        self._key = (int(seed), stream, int(rank))
        self._next_batch = int(start)
        self._start = int(start)
        self._stride = max(1, int(num_workers))
        self._isolated = isolated
        self._ignore_signals = tuple(ignore_signals)

    def set_thread_id(self, thread_id: int) -> None:
        import signal

        import torch
        from threadpoolctl import threadpool_limits

        # a forked worker must not use the parent's OpenMP pool (it hangs in the first torch op), and
        # several single-threaded workers beat one multi-threaded one, as nnU-Net's own workers do
        torch.set_num_threads(1)
        threadpool_limits(1)
        # a scheduler signals every process of a job: the main process turns it into a checkpoint and
        # still needs batches until then (the augmenter stops its workers through its own event)
        for signum in self._ignore_signals:
            signal.signal(signum, signal.SIG_IGN)
        self._next_batch = self._start + thread_id
        self._loader.set_thread_id(thread_id)

    def __next__(self):
        seed, stream, rank = self._key
        batch_seed = derive_seed(seed, stream, rank, self._next_batch)
        self._next_batch += self._stride
        if not self._isolated:
            seed_everything(batch_seed)
            return next(self._loader)
        with kept_random_state():
            seed_everything(batch_seed)
            return next(self._loader)


@contextlib.contextmanager
def kept_random_state():
    """Python's `random`, numpy's global and torch's CPU random state as they were before the block."""
    import torch

    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


def seeded_augmenters(loader_tr, loader_val, num_processes: int, seed: int, rank: int = 0,
                      pin_memory: bool = False, start_tr: int = 0, start_val: int = 0,
                      ignore_signals: tuple[int, ...] = ()):
    """Training and validation batch streams that are a function of `seed`, the rank and the batch number.

    Batch j of the training stream (j counts from the run's first step: epoch * iterations + step) and
    batch j of the validation stream are drawn from seeds derived for them (BatchSeededLoader), so the
    streams start at `start_tr` / `start_val` and a resumed run sees the batches an uninterrupted one
    would. num_processes == 0: both loaders run in this process (its own random state untouched);
    otherwise a MultiThreadedAugmenter per loader, read in a fixed round-robin order; its workers ignore
    `ignore_signals`. The workers start with the first batch asked for.
    """
    from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

    if num_processes == 0:
        tr = SingleThreadedAugmenter(BatchSeededLoader(loader_tr, seed, "batch_tr", rank, start_tr, isolated=True),
                                     None)
        val = SingleThreadedAugmenter(BatchSeededLoader(loader_val, seed, "batch_val", rank, start_val,
                                                        isolated=True), None)
        return tr, val
    n_val = max(1, num_processes // 2)
    # batchgenerators seeds numpy per worker once; every batch is reseeded anyway
    seeds_tr = [derive_seed(seed, "worker_tr", rank, i) for i in range(num_processes)]
    seeds_val = [derive_seed(seed, "worker_val", rank, i) for i in range(n_val)]
    tr = MultiThreadedAugmenter(BatchSeededLoader(loader_tr, seed, "batch_tr", rank, start_tr, num_processes,
                                                  ignore_signals=ignore_signals),
                                None, num_processes, max(2, 6 // num_processes), seeds_tr, pin_memory, wait_time=0.002)
    val = MultiThreadedAugmenter(BatchSeededLoader(loader_val, seed, "batch_val", rank, start_val, n_val,
                                                   ignore_signals=ignore_signals),
                                 None, n_val, 2, seeds_val, pin_memory, wait_time=0.002)
    return tr, val
