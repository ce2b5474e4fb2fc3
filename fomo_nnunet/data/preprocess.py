"""nnU-Net's preprocessing, sharded and resumable: the same files `nnUNetv2_preprocess` writes.

Each case goes through the plans' own preprocessor class (`run_case_save`, nnU-Net's code, not a
copy), writing into a hidden per-process folder `.fomo_partial/<host>-<pid>/` inside the output
folder; then the files move into place with os.replace, the case's data file `<case>.b2nd` last:
nnU-Net lists a case by that file, and so do we, so a case is either complete or absent. The ground
truth copy `gt_segmentations/<case>.nii.gz` (nnUNetv2_preprocess copies it for validation) is
written before that. The output folder is never deleted; a rerun skips the cases whose `.b2nd`
exists; shards (`i/n`: the cases whose index in the sorted case list is i modulo n) touch only
their own cases, so the shards of a job array can share one folder.

A stamp (`.fomo_preprocess.json`) in the output folder records what the arrays were made from
(the configuration, the intensity properties, the labels); a run with other plans is refused
instead of mixing two preprocessings in one folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from fomo_nnunet.data import workers as W
from fomo_nnunet.data.convert import parse_shard
from fomo_nnunet.io import atomic as A

PARTIAL = ".fomo_partial"
STAMP = ".fomo_preprocess.json"
STALE_SECONDS = 3600           # another host's partial folder older than this is a leftover
GT_FOLDER = "gt_segmentations"


class PreprocessError(ValueError):
    """A dataset, plans or source file that does not allow preprocessing; the message says which."""


@dataclass
class PreprocessResult:
    output: Path
    total: int = 0
    in_shard: int = 0
    already_done: int = 0
    done: int = 0
    leftovers: list[str] = field(default_factory=list)


def _case_files(output: Path, case: str) -> list[Path]:
    return [output / f"{case}_seg.b2nd", output / f"{case}.pkl", output / f"{case}.b2nd"]


class CaseJob:
    """One case through the plans' preprocessor, written atomically. Pickled once per worker."""

    def __init__(self, plans: dict, configuration: str, labels_json: dict, output: str, gt_folder: str,
                 file_ending: str):
        self.plans, self.configuration, self.labels_json = plans, configuration, labels_json
        self.output, self.gt_folder, self.file_ending = Path(output), Path(gt_folder), file_ending
        self._pp = None

    def _preprocessor(self):
        if self._pp is None:
            from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

            self.plans_manager = PlansManager(self.plans)
            self.configuration_manager = self.plans_manager.get_configuration(self.configuration)
            self._pp = self.configuration_manager.preprocessor_class(verbose=False)
        return self._pp

    def __call__(self, job: tuple) -> str:
        case, images, label = job
        pp = self._preprocessor()
        partial = self.output / PARTIAL / A.process_tag()
        partial.mkdir(parents=True, exist_ok=True)
        tmp = [partial / p.name for p in _case_files(self.output, case)]
        try:
            # the labels-only dataset.json: the preprocessor reads nothing else from it, and the `dataset`
            # entry of a referenced corpus (hundreds of thousands of paths) is not pickled per case
            pp.run_case_save(str(partial / case), images, label, self.plans_manager, self.configuration_manager,
                             self.labels_json)
            if label is not None:
                _copy_newer(Path(label), self.gt_folder / f"{case}{self.file_ending}")
            for t, final in zip(tmp, _case_files(self.output, case)):
                os.replace(t, final)
        except BaseException:
            for t in tmp:
                t.unlink(missing_ok=True)
            raise
        return case


def _copy_newer(src: Path, dst: Path) -> None:
    """As nnUNetv2_preprocess's copy of the ground truth (distutils copy_file, update=True: copied when
    missing or older, times kept), but through a temporary file and a rename."""
    try:
        if dst.stat().st_mtime >= src.stat().st_mtime:
            return
    except FileNotFoundError:
        pass
    with A.replacing(dst) as tmp:
        shutil.copy2(src, tmp)


def remove_partials(output: Path) -> list[str]:
    """The partial folders of dead runs: this host's dead processes at once, other hosts' when old."""
    removed = []
    root = output / PARTIAL
    if not root.is_dir():
        return removed
    now = time.time()
    for d in root.iterdir():
        try:
            stale = A.is_leftover(d.name, d.stat().st_mtime, STALE_SECONDS, now)
        except FileNotFoundError:
            continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    return removed


def _stamp(plans: dict, configuration: str, dataset_json: dict) -> dict:
    what = {"configuration": plans["configurations"][configuration],
            "foreground_intensity_properties_per_channel": plans.get("foreground_intensity_properties_per_channel"),
            "transpose_forward": plans.get("transpose_forward"), "labels": dataset_json.get("labels"),
            "regions_class_order": dataset_json.get("regions_class_order")}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    return {"plans_name": plans.get("plans_name"), "configuration": configuration, "sha256": digest}


def _check_stamp(output: Path, stamp: dict) -> None:
    f = output / STAMP
    if f.is_file():
        try:
            old = json.loads(f.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("sha256") != stamp["sha256"]:
            raise PreprocessError(
                f"{output} holds a preprocessing made with other plans ({old.get('plans_name')} "
                f"{old.get('configuration')}, changed since); delete that folder to start again")
        return
    if any(output.glob("*.b2nd")):
        raise PreprocessError(f"{output} already holds arrays not written by `fomo-nnunet preprocess` (by "
                              f"nnUNetv2_preprocess?): delete it, or keep using nnUNetv2_preprocess")
    A.write_json(stamp, f)


def dataset_name(dataset: int | str) -> str:
    """DatasetNNN_Name for an ID or a name, found in $nnUNet_preprocessed or $nnUNet_raw (read now, not
    when nnU-Net was imported)."""
    if not str(dataset).isdigit():
        return str(dataset)
    found = set()
    for var in ("nnUNet_preprocessed", "nnUNet_raw"):
        root = Path(os.environ[var])
        if root.is_dir():
            found |= {p.name for p in root.glob(f"Dataset{int(dataset):03d}_*") if p.is_dir()}
    if len(found) != 1:
        raise PreprocessError(f"dataset {dataset}: " + (f"several folders match ({', '.join(sorted(found))})" if found
                              else "no DatasetNNN_* folder in $nnUNet_preprocessed or $nnUNet_raw"))
    return found.pop()


def load_dataset(dataset: int | str, plans_name: str, configuration: str):
    """(dataset name, plans, dataset.json, {case: {'images', 'label'}}) as nnUNetv2_preprocess sees them."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    if not os.environ.get("nnUNet_raw") or not os.environ.get("nnUNet_preprocessed"):
        raise PreprocessError("$nnUNet_raw and $nnUNet_preprocessed must be set (see `fomo-nnunet env`)")
    name = dataset_name(dataset)
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    plans_file = pre / f"{plans_name}.json"
    if not plans_file.is_file():
        raise PreprocessError(f"no plans {plans_file}: run `fomo-nnunet plan` (or nnU-Net's planning) first")
    plans = json.loads(plans_file.read_text())
    if configuration not in plans.get("configurations", {}):
        raise PreprocessError(f"configuration {configuration!r} is not in {plans_file} (it has: "
                              f"{', '.join(plans.get('configurations', {}))})")
    ds_file = pre / "dataset.json"
    if not ds_file.is_file():
        raise PreprocessError(f"no {ds_file}: the planning copies it there; plan the dataset first")
    dataset_json = json.loads(ds_file.read_text())
    cases = get_filenames_of_train_images_and_targets(os.path.join(os.environ["nnUNet_raw"], name), dataset_json)
    return name, plans, dataset_json, cases


def _data_identifier(plans: dict, configuration: str) -> str:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(plans).get_configuration(configuration).data_identifier


def missing_sources(cases: dict, keys: list[str]) -> list[tuple[str, str]]:
    """(case, file) for every image or label of `keys` that is not a readable file now."""
    out = []
    for k in keys:
        for f in [*cases[k]["images"], cases[k]["label"]]:
            if f is not None and not os.path.isfile(f):
                out.append((k, f))
    return out


def _refuse_missing(gone: list[tuple[str, str]], then: str) -> None:
    if gone:
        first = "; ".join(f"{c}: {f}" for c, f in gone[:3])
        raise PreprocessError(
            f"{len(gone)} source files of {len({c for c, _ in gone})} cases are missing (moved or deleted since "
            f"the conversion?), e.g. {first}. Put them back, or rerun `fomo-nnunet convert pretrain SRC -d ID` "
            f"with the corpus where it is now (it references the scans again and removes vanished ones), "
            f"then `fomo-nnunet plan` and {then}")


def check_references(dataset: int | str) -> None:
    """Before planning: every file that the raw dataset.json's `dataset` entry names exists (nnU-Net's
    fingerprint extraction would otherwise stop with a reader's traceback)."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    raw = Path(os.environ.get("nnUNet_raw", ""))
    folders = sorted(raw.glob(f"Dataset{int(dataset):03d}_*")) if str(dataset).isdigit() else [raw / str(dataset)]
    if len(folders) != 1 or not (folders[0] / "dataset.json").is_file():
        return   # nnU-Net's own lookup says what is wrong
    dataset_json = json.loads((folders[0] / "dataset.json").read_text())
    if "dataset" in dataset_json:
        cases = get_filenames_of_train_images_and_targets(str(folders[0]), dataset_json)
        _refuse_missing(missing_sources(cases, sorted(cases)), "plan again")


def preprocess(dataset: int | str, plans_name: str, configuration: str = "3d_fullres", shard=None,
               num_processes: int = 1, progress: bool = True) -> PreprocessResult:
    """Preprocess this shard's unfinished cases into nnUNet_preprocessed/<dataset>/<data_identifier>."""
    shard_i, shard_n = parse_shard(shard)
    name, plans, dataset_json, cases = load_dataset(dataset, plans_name, configuration)
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    output = pre / _data_identifier(plans, configuration)
    output.mkdir(parents=True, exist_ok=True)
    (pre / GT_FOLDER).mkdir(exist_ok=True)
    _check_stamp(output, _stamp(plans, configuration, dataset_json))
    result = PreprocessResult(output, total=len(cases), leftovers=remove_partials(output))
    keys = [k for i, k in enumerate(sorted(cases)) if i % shard_n == shard_i]
    result.in_shard = len(keys)
    todo = [k for k in keys if not (output / f"{k}.b2nd").is_file()]
    result.already_done = len(keys) - len(todo)
    _refuse_missing(missing_sources(cases, todo), "this command")
    labels_json = {k: v for k, v in dataset_json.items() if k != "dataset"}
    job = CaseJob(plans, configuration, labels_json, str(output), str(pre / GT_FOLDER), dataset_json["file_ending"])
    jobs = [(k, cases[k]["images"], cases[k]["label"]) for k in todo]
    try:
        done = W.run_jobs(job, jobs, num_processes, progress, f"preprocess {name} {configuration}",
                          on_killed=lambda pids: remove_partials(output))
    finally:
        shutil.rmtree(output / PARTIAL / A.process_tag(), ignore_errors=True)
    result.done = len(done)
    return result


def verify(dataset: int | str, plans_name: str, configuration: str = "3d_fullres",
           num_processes: int = 1, progress: bool = True, shard=None) -> dict[str, list[str]]:
    """{'missing': cases without their three files, 'unreadable': cases whose arrays or properties
    cannot be read in full} over the whole dataset, or over one shard's cases."""
    shard_i, shard_n = parse_shard(shard)
    name, plans, _, cases = load_dataset(dataset, plans_name, configuration)
    output = Path(os.environ["nnUNet_preprocessed"]) / name / _data_identifier(plans, configuration)
    keys = [k for i, k in enumerate(sorted(cases)) if i % shard_n == shard_i]
    missing = [k for k in keys if not all(f.is_file() for f in _case_files(output, k))]
    present = [str(output / k) for k in keys if k not in set(missing)]
    bad = [r for r in W.run_jobs(_read_case, present, num_processes, progress, f"verify {name}") if r]
    return {"missing": missing, "unreadable": sorted(bad)}


def _read_case(truncated: str) -> str | None:
    """None when the case's arrays decompress in full and its properties load; else 'case: reason'."""
    import blosc2

    try:
        for suffix in (".b2nd", "_seg.b2nd"):
            blosc2.open(urlpath=truncated + suffix, mode="r")[...]
        with open(truncated + ".pkl", "rb") as f:
            pickle.load(f)
    except Exception as e:  # blosc2 and pickle raise many kinds for a truncated file
        return f"{Path(truncated).name}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return None
