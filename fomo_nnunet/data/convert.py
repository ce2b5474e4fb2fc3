"""Writing nnU-Net raw datasets from FOMO folders (pretraining corpora and task folders).

Every source file is checked before anything is written; a case whose files fail a check is
skipped with a reason in `conversion_report.json`. Outputs are written to a temporary file in the
target folder and moved into place with `os.replace`, and a case's record (in the hidden
`.fomo_records/` folder) is written only after all of its images and its label: a case is finished
exactly when its record says "ok" and its files exist. Reruns skip finished cases; `shard=(i, n)`
takes the cases with index % n == i of the stable sorted list. The dataset-level JSON files
(dataset.json, subjects.json, targets*.json, attributes.json, conversion_report.json) are rebuilt
from all records at the end of every run, so shards and reruns converge to the same files.

Checks on each image: a regular readable file (no broken link, no link loop), real gzip behind a
`.nii.gz` name, loadable and fully decompressible, 3D (a singleton 4th axis is dropped; a real 4D
series is reduced to its FIRST volume, with a note, as FOMO300K does), at least MIN_SLICES voxels
along every axis, a finite non-degenerate affine, some finite voxels (partial NaN/Inf set to 0
with a note) and some non-zero voxels. Images are written as float32, reoriented to the closest
RAS orientation (nibabel.as_closest_canonical), keeping the spacing.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import secrets
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fomo_nnunet import nifti_checks as NC
from fomo_nnunet import tasks as T
from fomo_nnunet.data import fomo_layout as L

MIN_SLICES = getattr(T, "MIN_SLICES", 15)
RECORDS = ".fomo_records"
REPORT = "conversion_report.json"
FILE_ENDING = ".nii.gz"
BRAIN_LABELS = {"background": 0, "brain": 1}
AFFINE_ATOL = 1e-3


class ScanError(Exception):
    """A source file that cannot be used; the message is the reason in the report."""


# ------------------------------------------------------------------------------------ reading
def check_file(path: Path) -> None:
    """Cheap checks before nibabel sees the file (see nifti_checks.check_path)."""
    try:
        NC.check_path(path)
    except NC.NiftiProblem as e:
        raise ScanError(str(e)) from None


def load_volume(path: Path, label: bool = False):
    """Check the header, then load and reorient one file; returns (nibabel image, notes).

    Images come back as float32; with `label=True` as uint8 (integer values 0..255 required, an
    empty label map allowed). Nothing is read before the header passed (nifti_checks.read_header).
    """
    import nibabel as nib

    try:
        header = NC.read_header(path, MIN_SLICES, allow_4d=True, label=label)
        if header.shear > NC.SHEAR_TOL:
            raise ScanError(f"sheared affine (voxel axes up to {90 - math.degrees(math.acos(min(1.0, header.shear))):.2g}"
                            f" deg from orthogonal): nnU-Net's SimpleITK reader cannot represent it; resample it "
                            f"onto an orthogonal grid first")
        notes = list(header.notes)
        data = NC.read_voxels(header, dtype=None if label else np.float32)
        if not label:
            data, more = NC.clean_intensities(data)
            notes += more
    except NC.NiftiProblem as e:
        raise ScanError(str(e)) from None
    affine = header.affine
    if label:
        if not np.issubdtype(data.dtype, np.integer):
            data = np.asarray(data, dtype=np.float64)
            if not np.all(np.isfinite(data)):
                raise ScanError("label map has NaN/Inf")
            if not np.all(data == np.round(data)):
                raise ScanError("label map has non-integer values")
        if data.size and (data.min() < 0 or data.max() > 255):
            raise ScanError(f"label values outside 0..255 ({data.min()}..{data.max()})")
        data = np.asarray(data, dtype=np.uint8)
    elif not np.any(data):
        raise ScanError("empty image (all voxels zero)")
    img = header.img
    hdr = img.header.copy() if isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)) else None
    if hdr is not None:
        hdr.set_data_shape(data.shape)
    out = nib.Nifti1Image(data, affine, hdr)
    out.header.set_data_dtype(np.uint8 if label else np.float32)
    out.header.set_slope_inter(1, 0)
    canon = nib.as_closest_canonical(out)
    if canon is not out:
        notes.append("reoriented to RAS")
    return canon, notes


def same_grid(a, b) -> bool:
    return tuple(a.shape[:3]) == tuple(b.shape[:3]) and np.allclose(a.affine, b.affine, rtol=0, atol=AFFINE_ATOL)


def resample_onto(img, ref):
    """`img` resampled (linear) onto the grid of `ref`."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    res = resample_from_to(img, (ref.shape[:3], ref.affine), order=1, cval=0.0)
    data = np.asarray(res.dataobj, dtype=np.float32)
    return nib.Nifti1Image(data, ref.affine, ref.header.copy())


def brain_mask(img):
    """uint8 map of the non-zero voxels, in the image's grid and header."""
    import nibabel as nib

    data = np.asanyarray(img.dataobj)
    hdr = img.header.copy()
    hdr.set_data_dtype(np.uint8)
    return nib.Nifti1Image((data != 0).astype(np.uint8), img.affine, hdr)


# ------------------------------------------------------------------------------------ writing
TMP_SUFFIX = ".tmp"
STALE_TMP_SECONDS = 3600        # another machine's temporary file older than this is a leftover
_HOST = socket.gethostname().replace(".", "_").replace("/", "_") or "host"


def _tmp_path(final: Path) -> Path:
    """A fresh name beside `final` (the file is created by the caller, inside its cleanup block, so
    that a signal arriving at any moment leaves nothing behind). Hidden and not ending in .nii.gz:
    nnU-Net never mistakes a leftover for a case. The host and process id in the name let a rerun
    tell a dead run's leftover from a live shard's file."""
    return final.parent / f".{final.name}.{_HOST}-{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"


def save_nifti(img, final: Path) -> None:
    """Write a NIfTI (gzip level 1, reproducible bytes) atomically, with the mode the umask gives."""
    import nibabel as nib

    tmp = _tmp_path(final)
    try:
        with open(tmp, "xb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
            img.to_file_map({"image": nib.FileHolder(fileobj=gz)})
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(obj, final: Path) -> None:
    """Write JSON atomically (a temporary file in the same folder, then os.replace)."""
    final = Path(final)
    tmp = _tmp_path(final)
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=1) + "\n")
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(folder: Path) -> list[str]:
    """Delete the temporary files that interrupted runs left in a dataset folder; returns their paths.

    A file of a process on this host that is gone is removed at once; a file of another host (a
    shard on another node) or of an older version only once it is STALE_TMP_SECONDS old.
    """
    removed = []
    now = time.time()
    for sub in ("", "imagesTr", "labelsTr", "imagesTs", "labelsTs", RECORDS):
        d = folder / sub
        if not d.is_dir():
            continue
        with os.scandir(d) as it:
            candidates = [e for e in it if e.name.startswith(".") and e.name.endswith(TMP_SUFFIX) and e.is_file()]
        for e in candidates:
            owner = e.name[: -len(TMP_SUFFIX)].rsplit(".", 2)
            host, _, pid = owner[-2].rpartition("-") if len(owner) == 3 else ("", "", "")
            try:
                if host == _HOST and pid.isdigit():
                    stale = not _pid_alive(int(pid))
                else:
                    stale = now - e.stat().st_mtime > STALE_TMP_SECONDS
                if stale:
                    os.unlink(e.path)
                    removed.append(e.path)
            except FileNotFoundError:
                continue
    return removed


def _write_case(folder: Path, images: list[tuple[object, str]], record: dict) -> None:
    """Write a case's images (img, relative path), then its record; on failure remove what was written."""
    done: list[Path] = []
    try:
        for img, rel in images:
            final = folder / rel
            save_nifti(img, final)
            done.append(final)
        record["outputs"] = [rel for _, rel in images]
        write_json(record, folder / RECORDS / f"{record['case']}.json")
    except BaseException:
        for p in done:
            p.unlink(missing_ok=True)
        raise


def _skip_record(folder: Path, record: dict, reason: str, path) -> dict:
    record.update(status="skipped", reason=reason, path=str(path))
    write_json(record, folder / RECORDS / f"{record['case']}.json")
    return record


# ----------------------------------------------------------------------------- dataset folder
def parse_shard(text: str | tuple[int, int] | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    if isinstance(text, tuple):
        i, n = text
    else:
        try:
            i, n = (int(x) for x in str(text).split("/"))
        except ValueError:
            raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard i/n needs 0 <= i < n, got {i}/{n}")
    return i, n


def dataset_folder(dataset_id: int, name: str) -> Path:
    """nnUNet_raw/DatasetNNN_name; refuses an ID that another folder already uses."""
    from fomo_nnunet.paths import require_env

    if not L._UNSAFE.sub("", name) == name or not name:
        raise ValueError(f"dataset name {name!r} may only hold letters, digits, '_' and '-'")
    if not 0 < int(dataset_id) < 1000:
        raise ValueError(f"dataset ID must be 1..999, got {dataset_id}")
    root = require_env("nnUNet_raw")
    folder = root / f"Dataset{int(dataset_id):03d}_{name}"
    others = sorted(p.name for p in root.glob(f"Dataset{int(dataset_id):03d}_*") if p != folder) if root.is_dir() else []
    if others:
        raise ValueError(f"dataset ID {dataset_id} is already used by {root / others[0]}; choose another -d "
                         f"or --name {others[0].split('_', 1)[1]}")
    return folder


def _check_role(folder: Path, key: str, value) -> None:
    ds = folder / "dataset.json"
    if ds.is_file():
        try:
            old = json.loads(ds.read_text())
        except (OSError, ValueError):
            return
        if key in old and old[key] != value:
            raise ValueError(f"{folder} holds a different conversion ({key}={old[key]!r}, not {value!r}); "
                             f"choose another -d/--name")
        if key not in old:
            raise ValueError(f"{folder} exists and was not written by `fomo-nnunet convert`; choose another -d/--name")


def _load_records(folder: Path) -> dict[str, dict]:
    out = {}
    rec_dir = folder / RECORDS
    if not rec_dir.is_dir():
        return out
    with os.scandir(rec_dir) as it:
        names = sorted(e.name for e in it if e.name.endswith(".json") and not e.name.startswith("."))
    for n in names:
        try:
            rec = json.loads((rec_dir / n).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        out[rec.get("case", n[:-5])] = rec
    return out


def _tally(job_results, result) -> None:
    """Count converted cases and list skipped ones (with the reason) as the workers report them."""
    for r in job_results:
        if r.get("status") == "ok":
            result.converted += 1
        else:
            result.skipped.append({"case": r["case"], "path": r.get("path", ""), "reason": r.get("reason", "")})


def _pending(items, folder: Path, records: dict, shard_i: int, shard_n: int, result):
    """The items (with .case_id) of this shard that a previous run has not finished; counts both."""
    for i, item in enumerate(items):
        if i % shard_n != shard_i:
            continue
        result.in_shard += 1
        if _finished(folder, records.get(item.case_id)):
            result.already_done += 1
            continue
        yield item


def _finished(folder: Path, rec: dict | None) -> bool:
    return bool(rec) and rec.get("status") == "ok" and all((folder / r).is_file() for r in rec.get("outputs", []))


@dataclass
class ConvertResult:
    folder: Path
    total: int = 0                   # cases in the source
    in_shard: int = 0                # cases this run was responsible for
    already_done: int = 0            # finished by an earlier run
    converted: int = 0               # finished by this run
    skipped: list[dict] = field(default_factory=list)   # skipped by this run: case, path, reason
    listing: list[dict] = field(default_factory=list)   # folders and files unusable before any case: path, reason
    removed: list[str] = field(default_factory=list)    # cases whose source is gone, removed by this run
    leftovers: list[str] = field(default_factory=list)  # temporary files of interrupted runs, removed
    report: dict = field(default_factory=dict)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the converting process; `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


class _InterruptibleRun:
    """SIGTERM (and SIGINT) raise Interrupted in the main thread while jobs run, so that every
    `except BaseException` cleanup (temporary files, half-written cases, the worker pool) runs."""

    def __enter__(self):
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, _raise_interrupted)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


PARENT_POLL_SECONDS = 0.5


def _worker_init(parent_pid: int) -> None:
    """In each worker: the parent alone handles SIGINT (and then ends the pool with SIGTERM); SIGTERM
    ends the worker through its cleanup; a watcher ends it the same way once the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="fomo-parent-watch").start()


_IN_CASE = False   # in a worker: True while a job (one case) runs


def _exit_on_signal(signum, frame):
    """SIGTERM in a worker. Inside a case it raises, so the case's cleanup removes its temporary files.
    Anywhere else the worker ends at once: an exception raised in `multiprocessing`'s own code (a
    queue's lock, the worker's exit path) can leave a lock held or run the parent's stack in the
    forked child, and the pool then never finishes joining (seen as a hang of `convert pretrain`)."""
    if _IN_CASE:
        raise SystemExit(128 + signum)
    os._exit(128 + signum)


class _CaseJob:
    """A job run by a pool worker, marked as 'inside a case' for `_exit_on_signal`."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, job):
        global _IN_CASE
        _IN_CASE = True
        try:
            return self.fn(job)
        finally:
            _IN_CASE = False


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)   # the main thread cleans up and exits
    time.sleep(10)
    os._exit(1)                            # it was stuck where no signal reaches Python


def _run_jobs(fn, jobs: list, num_processes: int, progress: bool, desc: str) -> list[dict]:
    from tqdm import tqdm

    results: list[dict] = []
    with _InterruptibleRun():
        if num_processes <= 1 or len(jobs) <= 1:
            with tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress, dynamic_ncols=True) as bar:
                for j in jobs:
                    results.append(fn(j))
                    bar.update()
            return results
        import multiprocessing as mp

        # fork where there is one: workers need nothing but this module, and unlike spawn it does not
        # re-run an unguarded calling script. The pool starts before tqdm's monitor thread exists.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(min(num_processes, len(jobs)), initializer=_worker_init, initargs=(os.getpid(),))
        try:
            with tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress, dynamic_ncols=True) as bar:
                for r in pool.imap_unordered(_CaseJob(fn), jobs, chunksize=1 if len(jobs) < 200 else 4):
                    results.append(r)
                    bar.update()
        except BaseException:
            pool.terminate()   # SIGTERM: a worker in the middle of a case removes its temporary files
            pool.join()
            raise
        # Every case is done: the workers leave on the pool's own sentinels. No terminate() here: it
        # signals workers that are already on their way out, which could hang the join.
        pool.close()
        pool.join()
    return results


def _summarise(folder: Path, result: ConvertResult, records: dict[str, dict], extra: dict) -> dict:
    ok = {c: r for c, r in records.items() if r.get("status") == "ok"}
    skipped = [{"case": c, "path": r.get("path", ""), "reason": r.get("reason", "")}
               for c, r in sorted(records.items()) if r.get("status") == "skipped"]
    removed = [{"case": c, "path": r.get("path", ""), "reason": r.get("reason", "")}
               for c, r in sorted(records.items()) if r.get("status") == REMOVED]
    notes = {c: r["notes"] for c, r in sorted(ok.items()) if r.get("notes")}
    report = {"dataset": folder.name, **extra, "converted": len(ok), "skipped": result.listing + skipped,
              "removed": removed, "notes": notes}
    write_json(report, folder / REPORT)
    result.report = report
    return report


REMOVED = "removed"


def reconcile(folder: Path, records: dict[str, dict], case_ids: set[str]) -> list[str]:
    """Cases converted earlier whose source is gone: their files are deleted and their record says
    'removed' (listed in the report until the source comes back). Returns their ids."""
    gone = []
    for case, rec in sorted(records.items()):
        if case in case_ids or rec.get("status") == REMOVED:
            continue
        for rel in rec.get("outputs", []):
            (folder / rel).unlink(missing_ok=True)
        path = rec.get("path") or next(iter((rec.get("files") or {}).values()), "")
        new = {"case": case, "status": REMOVED, "path": path,
               "reason": "the source is gone (deleted or renamed since an earlier conversion); "
                         f"{'its files were removed' if rec.get('status') == 'ok' else 'it had been skipped'}"}
        write_json(new, folder / RECORDS / f"{case}.json")
        records[case] = new
        gone.append(case)
    return gone


def _prepare(folder: Path, result: ConvertResult, case_ids: set[str]) -> dict[str, dict]:
    """Before converting: leftovers of interrupted runs removed, the records reconciled with the source."""
    result.leftovers = remove_leftovers(folder)
    records = _load_records(folder)
    result.removed = reconcile(folder, records, case_ids)
    return records


# ---------------------------------------------------------------------------------- pretraining
def _pretrain_job(job: tuple) -> dict:
    folder, scan, meta = job
    folder = Path(folder)
    rec = {"case": scan.case_id, "source": scan.source, "subject": scan.subject, "session": scan.session,
           "sequence": scan.sequence, "stem": scan.stem, "path": str(scan.path), **meta}
    try:
        img, notes = load_volume(scan.path)
    except ScanError as e:
        return _skip_record(folder, rec, str(e), scan.path)
    rec.update(status="ok", notes=notes)
    _write_case(folder, [(img, f"imagesTr/{scan.case_id}_0000{FILE_ENDING}"),
                         (brain_mask(img), f"labelsTr/{scan.case_id}{FILE_ENDING}")], rec)
    return rec


def convert_pretrain(src, dataset_id: int = T.PRETRAIN_DATASET_ID, name: str | None = None,
                     layout: str | None = None, num_processes: int = 1, shard=None,
                     progress: bool = True) -> ConvertResult:
    """Convert a FOMO60K/FOMO300K tree into nnUNet_raw/DatasetNNN_name (one case per scan)."""
    src = Path(src)
    name = name or T.PRETRAIN_DATASET_NAME.split("_", 1)[1]
    folder = dataset_folder(dataset_id, name)
    shard_i, shard_n = parse_shard(shard)
    problems: list[dict] = []
    layout, scans = L.list_pretrain_scans(src, layout, problems)
    _check_role(folder, "fomo_role", "pretrain")
    participants = L.pretrain_participants(src)
    mri_info = L.pretrain_mri_info(src)
    for sub in ("imagesTr", "labelsTr", RECORDS):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    result = ConvertResult(folder, total=len(scans), listing=problems)
    records = _prepare(folder, result, {s.case_id for s in scans})
    jobs = []
    for scan in _pending(scans, folder, records, shard_i, shard_n, result):
        meta = {"participant": participants.metadata(scan.subject, scan.session, scan.source)}
        info = mri_info.get((scan.source, scan.subject, scan.session)) or \
            mri_info.get(("", scan.subject, scan.session)) or []
        info = [r for r in info if str(r.get("scan", r.get("filename", r.get("sequence", scan.stem)))).split(".")[0]
                in (scan.stem, scan.sequence)] or ([] if len(info) != 1 else info)
        if info:
            meta["mri_info"] = info[0] if len(info) == 1 else info
        jobs.append((str(folder), scan, meta))
    _tally(_run_jobs(_pretrain_job, jobs, num_processes, progress, f"convert {folder.name}"), result)
    finalize_pretrain(folder, result, layout)
    return result


def finalize_pretrain(folder: Path, result: ConvertResult | None = None, layout: str = "") -> dict:
    """Rebuild dataset.json, subjects.json and the report from all case records."""
    result = result or ConvertResult(folder)
    records = _load_records(folder)
    ok = {c: r for c, r in sorted(records.items()) if r.get("status") == "ok"}
    subjects: dict[str, dict] = {}
    for c, r in ok.items():
        key = f"{r['source']}/{r['subject']}/{r['session']}"
        entry = subjects.setdefault(key, {"source": r["source"], "subject": r["subject"],
                                          "session": r["session"], "scans": {}})
        entry["scans"][c] = r["sequence"]
        for k, v in (r.get("participant") or {}).items():
            entry.setdefault(k, v)
        if r.get("mri_info") is not None:
            entry.setdefault("mri_info", {})[c] = r["mri_info"]
    subjects = dict(sorted(subjects.items()))
    dataset = {"channel_names": {"0": "MRI"}, "labels": dict(BRAIN_LABELS), "numTraining": len(ok),
               "file_ending": FILE_ENDING, "fomo_role": "pretrain", "name": folder.name,
               "description": "FOMO pretraining corpus; label = brain (non-zero) mask; sessions in subjects.json"}
    write_json(subjects, folder / "subjects.json")
    write_json(dataset, folder / "dataset.json")
    return _summarise(folder, result, records, {"role": "pretrain", **({"layout": layout} if layout else {})})


# ------------------------------------------------------------------------------------- tasks
def parse_target(task: T.Task, path: Path):
    """The image-level target in label.txt: an int class (classification, embedding) or a float."""
    check_file(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig").strip()  # a byte-order mark is not part of the value
    except (OSError, UnicodeDecodeError) as e:
        raise ScanError(f"cannot read label.txt: {e}") from None
    tokens = text.split()
    if len(tokens) != 1:
        raise ScanError(f"label.txt must hold one value, found {len(tokens)} tokens")
    try:
        value = float(tokens[0])
    except ValueError:
        raise ScanError(f"label.txt value {tokens[0][:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise ScanError("label.txt value is not finite")
    if task.kind == T.REGRESSION:
        return value
    if value != int(value) or value < 0:
        raise ScanError(f"label.txt value {tokens[0]!r} is not a class index")
    if task.kind == T.CLASSIFICATION and int(value) >= task.num_classes:
        raise ScanError(f"class {int(value)} outside 0..{task.num_classes - 1} ({', '.join(task.classes)})")
    return int(value)


def _task_job(job: tuple) -> dict:
    folder, task_number, case = job
    folder, task = Path(folder), T.TASKS_BY_NUMBER[task_number]
    sfx = "Tr" if case.split == L.TRAIN else "Ts"
    rec = {"case": case.case_id, "split": case.split, "subject": case.subject, "session": case.session,
           "files": {k: str(v) for k, v in case.files.items()},
           "label": str(case.label) if case.label else None, "attributes": case.attributes}
    if case.problem:
        return _skip_record(folder, rec, case.problem, case.image_dir)
    notes = list(case.notes)
    images = []
    ref = None
    for k, ch in enumerate(task.channels):
        path = case.files[ch.name]
        try:
            img, n = load_volume(path)
        except ScanError as e:
            return _skip_record(folder, rec, f"{ch.name}: {e}", path)
        notes += [f"{ch.name}: {x}" for x in n]
        if ref is None:
            ref = img
        elif not same_grid(img, ref):
            notes.append(f"{ch.name}: grid differs from {task.channels[0].name} ("
                         f"{NC.describe_grid_difference(img.shape[:3], img.affine, ref.shape[:3], ref.affine)}); "
                         f"resampled (linear) onto it")
            img = resample_onto(img, ref)
            if not np.any(np.asanyarray(img.dataobj)):
                return _skip_record(folder, rec, f"{ch.name}: empty after resampling onto "
                                                 f"{task.channels[0].name} (no overlap)", path)
        images.append((img, f"images{sfx}/{case.case_id}_{k:04d}{FILE_ENDING}"))
    if task.kind == T.SEGMENTATION:
        try:
            seg, n = load_volume(case.label, label=True)
        except ScanError as e:
            return _skip_record(folder, rec, f"segmentation: {e}", case.label)
        notes += [f"segmentation: {x}" for x in n]
        if not same_grid(seg, ref):
            return _skip_record(folder, rec, "segmentation grid differs from the images' ("
                                + NC.describe_grid_difference(seg.shape[:3], seg.affine, ref.shape[:3], ref.affine)
                                + ")", case.label)
        bad = sorted(set(np.unique(np.asanyarray(seg.dataobj)).tolist()) - set(task.labels.values()))
        if bad:
            return _skip_record(folder, rec, f"segmentation values {bad} not in task labels "
                                             f"{sorted(task.labels.values())}", case.label)
        hdr = ref.header.copy()
        hdr.set_data_dtype(np.uint8)
        import nibabel as nib

        label_img = nib.Nifti1Image(np.asarray(seg.dataobj, dtype=np.uint8), ref.affine, hdr)
    else:
        try:
            rec["target"] = parse_target(task, case.label)
        except ScanError as e:
            return _skip_record(folder, rec, str(e), case.label)
        label_img = brain_mask(ref)
    images.append((label_img, f"labels{sfx}/{case.case_id}{FILE_ENDING}"))
    rec.update(status="ok", notes=notes)
    _write_case(folder, images, rec)
    return rec


def convert_task(task: T.Task | str | int, src, dataset_id: int | None = None, name: str | None = None,
                 num_processes: int = 1, shard=None, progress: bool = True) -> ConvertResult:
    """Convert a FOMO task folder into nnUNet_raw/DatasetNNN_name."""
    task = task if isinstance(task, T.Task) else T.get_task(task)
    src = Path(src)
    dataset_id = task.default_dataset_id if dataset_id is None else dataset_id
    name = name or task.dataset_name.split("_", 1)[1]
    folder = dataset_folder(dataset_id, name)
    shard_i, shard_n = parse_shard(shard)
    problems: list[dict] = []
    cases = L.list_task_cases(task, src, problems)
    _check_role(folder, "fomo_task", task.number)
    for sub in ("imagesTr", "labelsTr", RECORDS):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    if any(c.split == L.TEST for c in cases):
        (folder / "imagesTs").mkdir(exist_ok=True)
        (folder / "labelsTs").mkdir(exist_ok=True)
    result = ConvertResult(folder, total=len(cases), listing=problems)
    records = _prepare(folder, result, {c.case_id for c in cases})
    jobs = [(str(folder), task.number, case) for case in _pending(cases, folder, records, shard_i, shard_n, result)]
    _tally(_run_jobs(_task_job, jobs, num_processes, progress, f"convert {folder.name}"), result)
    finalize_task(folder, task, result)
    return result


def finalize_task(folder: Path, task: T.Task, result: ConvertResult | None = None) -> dict:
    """Rebuild dataset.json, targets(Ts).json, attributes.json, subjects.json and the report."""
    result = result or ConvertResult(folder)
    records = _load_records(folder)
    ok = {c: r for c, r in sorted(records.items()) if r.get("status") == "ok"}
    train = {c: r for c, r in ok.items() if r["split"] == L.TRAIN}
    test = {c: r for c, r in ok.items() if r["split"] == L.TEST}
    dataset = {"channel_names": {str(i): n for i, n in enumerate(task.channel_names)},
               "labels": dict(task.labels) if task.kind == T.SEGMENTATION else dict(BRAIN_LABELS),
               "numTraining": len(train), "file_ending": FILE_ENDING,
               "fomo_task": task.number, "fomo_kind": task.kind, "name": folder.name,
               "description": task.description}
    if test:
        dataset["numTest"] = len(test)
    if task.kind == T.CLASSIFICATION:
        dataset["fomo_classes"] = list(task.classes)
    if task.kind == T.REGRESSION:
        dataset["fomo_unit"] = task.unit
    write_json(dataset, folder / "dataset.json")
    if task.kind != T.SEGMENTATION:
        write_json({c: r.get("target") for c, r in train.items()}, folder / "targets.json")
        if test:
            write_json({c: r.get("target") for c, r in test.items()}, folder / "targetsTs.json")
    write_json({c: {**(r.get("attributes") or {}), "split": r["split"]} for c, r in ok.items()},
               folder / "attributes.json")
    write_json({c: {"subject": r["subject"], "session": r["session"], "split": r["split"], "files": r["files"],
                    **({"label": r["label"]} if task.kind == T.SEGMENTATION else {})}
                for c, r in ok.items()}, folder / "subjects.json")
    return _summarise(folder, result, records, {"task": task.key, "kind": task.kind,
                                                "train": len(train), "test": len(test)})
