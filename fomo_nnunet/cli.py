"""The `fomo-nnunet` command: thin argument parsing that calls library functions.

Each subcommand lives in a module that has `register(subparsers)`; those modules import torch and
nnU-Net lazily inside their handlers, so `--help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

# Modules that add subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "fomo_nnunet.commands.env",
    "fomo_nnunet.commands.synth",
    "fomo_nnunet.commands.convert",
    "fomo_nnunet.commands.plan",
    "fomo_nnunet.commands.preprocess",
    "fomo_nnunet.commands.train",
    "fomo_nnunet.commands.inspect_bench",
    "fomo_nnunet.commands.import_checkpoint",
    "fomo_nnunet.commands.export_checkpoint",
    "fomo_nnunet.commands.predict",
    "fomo_nnunet.commands.embedding_stats",
    "fomo_nnunet.commands.fomo26",
    "fomo_nnunet.commands.evaluate",
    "fomo_nnunet.commands.benchmark",
)


class SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser that refuses arguments it does not know itself, with its own usage line.

    argparse hands a subparser's leftovers back to the top-level parser, which then prints the top-level
    usage for a typo in `fomo-nnunet plan transfer --pretraind X`."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)} (see `{self.prog} --help`)")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fomo-nnunet",
        description="nnU-Net v2 plugin for brain-MRI foundation models (FOMO26): synthetic data, "
                    "conversion of FOMO folders, MAE pretraining plans, transfer, prediction.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from fomo_nnunet import __version__

    parser.add_argument("--version", action="version", version=f"fomo-nnunet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=SubcommandParser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised like Ctrl-C so that cleanups (`finally`, `except BaseException`) run."""


_interrupted = False
_outer_unraisablehook = sys.__unraisablehook__


def _quiet_after_interrupt(unraisable) -> None:
    """`sys.unraisablehook` while a command runs: after an interrupt, a half-built object's `__del__` stays quiet.

    The signal's exception can cut any `__init__` short, a library's included: nibabel's `OrderedSet` then
    lacks its `map` and its `__del__` printed "Exception ignored ... Traceback ... AttributeError" above our
    one-line "interrupted (SIGTERM)" (seen once in CI, in a conversion stopped by SIGTERM). Such a
    traceback says nothing about the user's data or the run, so it is dropped once an interrupt is on its
    way; before that, every unraisable exception goes to the hook that was in place when the command started.
    """
    if _interrupted:
        return
    _outer_unraisablehook(unraisable)


def _terminate(signum, frame):
    global _interrupted
    _interrupted = True
    raise Terminated()


def _interrupt(signum, frame):
    """SIGINT as Python's own handler treats it (KeyboardInterrupt), noting that an interrupt is on its way."""
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt()


def _default_sigterm_in_forked_child() -> None:
    """A forked worker (nnU-Net's `multiprocessing.Pool`s fork) dies on SIGTERM, as under nnU-Net's own commands.

    Inherited, `_terminate` makes pool workers run Python code when `Pool.terminate()` signals them at the
    pool's end: a worker then raised inside a queue lock's release (a traceback in the benchmark's log), and
    `fomo-nnunet plan pretrain` hung at 0 % CPU in nnU-Net's fingerprint extraction with the parent joining a
    worker that waited on the pool's queue lock (py-spy); a SIGTERM by hand ended that worker and the
    planning went on. With the default disposition the workers end as nnU-Net expects.
    """
    if signal.getsignal(signal.SIGTERM) is _terminate:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:  # not the child's main thread: nothing to reset there
            pass
    if signal.getsignal(signal.SIGINT) is _interrupt:
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        except ValueError:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_default_sigterm_in_forked_child)


def main(argv: list[str] | None = None) -> int:
    from fomo_nnunet import exit_codes

    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `fomo-nnunet ... | head` ends quietly
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return exit_codes.BAD_INPUT
    global _interrupted, _outer_unraisablehook
    _interrupted = False
    previous = signal.signal(signal.SIGTERM, _terminate)
    # only where Ctrl-C would raise KeyboardInterrupt anyway (a background job keeps SIGINT ignored)
    previous_int = signal.signal(signal.SIGINT, _interrupt) \
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler else None
    previous_hook = sys.unraisablehook
    if previous_hook is not _quiet_after_interrupt:  # a command run in-process by another keeps the outer hook
        _outer_unraisablehook = previous_hook
    sys.unraisablehook = _quiet_after_interrupt
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
        print(f"interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return exit_codes.for_signal(signum)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)
        if not _interrupted:  # a cycle holding a half-built object may still be collected on the way out
            sys.unraisablehook = previous_hook


if __name__ == "__main__":
    sys.exit(main())
