"""The README's CPU quick path runs as printed.

Design. The README marks its quick-path block with a `<!-- quick-path` comment; this test takes the fenced
block that follows it, exactly as a reader would copy it (nothing of it is repeated here), and runs it with
`bash -e` in a temporary folder, so that a command that fails stops the test. Inside that folder `.venv` is a
link to the environment running the tests, so the block's `source .venv/bin/activate` works as in a checkout,
and the block's own `export nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=...` puts nnU-Net's three
folders under that temporary folder (the test removes any nnU-Net variables it inherits first).

Two documented substitutions keep it within the test budget (the full path spends most of its time training:
docs/results/quick-path.md):
1. every `_tiny` trainer of the block (`nnUNetTrainerFomoMAE_tiny`, `..Seg_tiny`, `..Cls_tiny`), in commands and
   in results-folder names alike, becomes its `_tiny_smoke` twin: the same recipe and code path with a few
   iterations per epoch (`SMOKE_FINETUNING`, `SMOKE_BUDGET`);
2. the `fomo-nnunet synth ... --preset tiny` line gets SMALLER_DATA appended: 3 test cases per task instead of 20
   and a pretraining corpus of 2 sources x 2 subjects, no preview pictures (FOMO-Synth is deterministic per case,
   so test case `sub_1`, which the block's challenge entry reads, is the same case with the same sequences).
Everything else (conversion, planning, nnU-Net's preprocessing, prediction, evaluation, the bundle and the
challenge entry) runs as printed.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- quick-path"
TINY_TRAINER = re.compile(r"\b(nnUNetTrainerFomo(?:MAE|Seg|Cls|Reg))_tiny(?![A-Za-z0-9]|_[A-Za-z0-9])")
SYNTH_TINY = re.compile(r"^(fomo-nnunet synth .*?--preset tiny\b)", flags=re.M)
SMALLER_DATA = " --n-test 3 --pretrain-sources 2 --pretrain-subjects 2 --no-previews"


def quick_path_block(readme: str) -> str:
    """The fenced code block right after the quick-path marker, as printed."""
    assert MARKER in readme, f"README.md has no '{MARKER}' marker before its quick path"
    after = readme.split(MARKER, 1)[1]
    match = re.search(r"^```[a-z]*\n(.*?)^```", after, flags=re.S | re.M)
    assert match, "no fenced code block after the quick-path marker"
    return match.group(1)


def smoke_twins(block: str) -> tuple[str, int]:
    """The block with every `_tiny` trainer replaced by its `_tiny_smoke` twin, and how many were replaced."""
    return TINY_TRAINER.subn(r"\1_tiny_smoke", block)


def smaller_data(block: str) -> str:
    """The block with SMALLER_DATA appended to its one `fomo-nnunet synth ... --preset tiny` command."""
    out, n = SYNTH_TINY.subn(lambda m: m.group(1) + SMALLER_DATA, block)
    assert n == 1, f"expected one `fomo-nnunet synth ... --preset tiny` line in the quick path, found {n}"
    return out


def test_the_substitution_touches_only_tiny_trainer_names():
    block = ("nnUNetv2_train 900 3d_fullres all -tr nnUNetTrainerFomoMAE_tiny -device cpu\n"
             "PRE=results/Dataset900_FOMOPretrain/nnUNetTrainerFomoMAE_tiny__fomoPretrainPlans__3d_fullres\n"
             "nnUNetv2_train 902 3d_fullres all -tr nnUNetTrainerFomoSeg_tiny_long\n"
             "fomo-nnunet synth -o synth --preset tiny --arch tiny\n")
    out, n = smoke_twins(block)
    assert n == 2
    assert smaller_data(out).endswith("--preset tiny" + SMALLER_DATA + " --arch tiny\n")
    assert "-tr nnUNetTrainerFomoMAE_tiny_smoke -device" in out
    assert "nnUNetTrainerFomoMAE_tiny_smoke__fomoPretrainPlans" in out
    assert "nnUNetTrainerFomoSeg_tiny_long" in out and "--preset tiny --arch tiny" in out


def test_the_readme_quick_path_is_cpu_sized():
    block = quick_path_block((ROOT / "README.md").read_text())
    trains = [line for line in block.splitlines() if line.startswith("nnUNetv2_train")]
    assert len(trains) == 3 and all("-device cpu" in t and "_tiny " in t for t in trains), trains
    assert "--arch tiny" in block and "--preset tiny" in block
    assert "export nnUNet_raw=" in block and "nnUNet_results=" in block


@pytest.mark.slow
@pytest.mark.timeout(1500)  # about 20 commands, each starting torch: far longer than alone on a shared 2-core machine
def test_the_readme_quick_path_runs_as_printed_with_smoke_trainers(tmp_path):
    from fomo_nnunet.paths import trainers_dir

    block, n = smoke_twins(quick_path_block((ROOT / "README.md").read_text()))
    assert n >= 6, "the quick path names fewer _tiny trainers than expected"
    block = smaller_data(block)
    for name in set(re.findall(r"\bnnUNetTrainerFomo\w+?_tiny_smoke\b", block)):
        assert any(f"class {name}(" in f.read_text() for f in trainers_dir().glob("*.py")), name
    activate = Path(sys.prefix) / "bin" / "activate"
    if not activate.is_file():
        pytest.skip(f"the tests do not run in a virtual environment ({sys.prefix} has no bin/activate)")
    (tmp_path / ".venv").symlink_to(sys.prefix)
    script = tmp_path / "quick_path.sh"
    script.write_text(block)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "FOMO_", "VIRTUAL_ENV"))}
    done = subprocess.run(["bash", "-e", "-o", "pipefail", str(script)], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert done.returncode == 0, done.stdout[-6000:]

    work = tmp_path / "fomo_quick"
    assert sorted(p.name for p in (work / "results").iterdir()) == [
        "Dataset900_FOMOPretrain", "Dataset901_FOMO1Infarct", "Dataset902_FOMO2Meningioma"]
    seg = json.loads((work / "scores902" / "summary.json").read_text())
    cls = json.loads((work / "scores901" / "summary.json").read_text())
    assert seg["metrics"] and cls["metrics"], (seg, cls)
    assert json.loads((work / "bundle" / "manifest.json").read_text())["tasks"]
    out = nib.load(work / "entry" / "sub_1.nii.gz")
    flair = nib.load(next((work / "synth" / "finetune" / "task2" / "test" / "preprocessed").glob("sub_1/ses_1/flair.nii.gz")))
    assert out.shape == flair.shape
