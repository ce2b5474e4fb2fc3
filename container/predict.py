#!/usr/bin/env python3
"""The container's entry point: `predict.py --flair F --dwi D --swi S --output OUT`.

One line of work: hand the arguments to `fomo-nnunet fomo26 TASK`. The task is baked into the
image at build time (FOMO_TASK, from Apptainer.def's TASK build argument); the bundle is
FOMO_BUNDLE (default /app/bundle).
"""
import os
import sys

from fomo_nnunet.cli import main

if __name__ == "__main__":
    task = os.environ.get("FOMO_TASK")
    if not task:
        sys.exit(print("error: FOMO_TASK is not set (build the image with --build-arg TASK=taskN)", file=sys.stderr) or 2)
    sys.exit(main(["fomo26", task, *sys.argv[1:]]))
