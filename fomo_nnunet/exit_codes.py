"""The exit codes of `fomo-nnunet fomo26` (the container entry), `fomo-nnunet convert` and training: one
table, printed by the commands' --help and docs/challenge.md, and held to by tests. `fomo-nnunet plan`,
`predict` and the fomo trainers under nnU-Net's commands answer a user's mistake the same way: one line,
BAD_INPUT."""
from __future__ import annotations

import signal

OK = 0
FAILED = 1           # an unexpected error (a bug or the machine)
BAD_INPUT = 2        # bad arguments or input files / source folder: one line naming which and why
BAD_BUNDLE = 3       # fomo26: the model bundle is missing or broken: one line naming the file and the fix
INTERRUPTED = 128 + signal.SIGINT    # 130: SIGINT (Ctrl-C); temporary files removed, workers stopped
TERMINATED = 128 + signal.SIGTERM    # 143: SIGTERM (timeout, job scheduler); the same cleanup
# training (nnUNetv2_train / fomo-nnunet train with a fomo trainer): a stop signal (FOMO_STOP_SIGNALS) was turned
# into checkpoint_latest; continue with --c. 75 is EX_TEMPFAIL of sysexits.h: a temporary failure, retry later
PREEMPTED = 75

TABLE = f"""exit codes (fomo26 and convert):
  {OK:<4d}done (convert: skipped and removed items are listed in conversion_report.json)
  {FAILED:<4d}unexpected error (a bug or the machine): fomo26 one line on stderr (--verbose: the
      traceback), convert the traceback
  {BAD_INPUT:<4d}bad arguments or input: a missing/unreadable/invalid input file or --output (fomo26),
      a missing or unrecognised source folder, dataset ID or $nnUNet_raw, or nothing
      converted (convert: the line says which task the folder looks like)
  {BAD_BUNDLE:<4d}fomo26: the model bundle is missing or broken (the message names the file)
  {INTERRUPTED:<4d}interrupted by SIGINT (Ctrl-C); nothing half-written is left
  {TERMINATED:<4d}terminated by SIGTERM; nothing half-written is left"""


TRAIN_TABLE = f"""exit codes (training with a fomo trainer, also under torchrun per process):
  {OK:<4d}training done
  {PREEMPTED:<4d}preempted: a stop signal ($FOMO_STOP_SIGNALS, default SIGTERM,SIGUSR1) ended the run after
      its current step with checkpoint_latest.pth written; rerun the same command with --c
      (SLURM: requeue the job; docs/preemption.md)"""


def for_signal(signum: int) -> int:
    return 128 + int(signum)
