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
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fomo_nnunet.io import atomic as A
from fomo_nnunet.io import grids as G
from fomo_nnunet.io import nifti_checks as NC
from fomo_nnunet import tasks as T
from fomo_nnunet.data import fomo_layout as L
from fomo_nnunet.data import workers as W

MIN_SLICES = getattr(T, "MIN_SLICES", 15)
RECORDS = ".fomo_records"
COPY, REFERENCE = "copy", "reference"     # how a pretraining corpus keeps its scans (dataset.json 'fomo_storage')
REPORT = "conversion_report.json"
FILE_ENDING = ".nii.gz"
BRAIN_LABELS = {"background": 0, "brain": 1}


class ScanError(Exception):
    """A source file that cannot be used; the message is the reason in the report."""


# ------------------------------------------------------------------------------------ reading
def check_file(path: Path) -> None:
    """Cheap checks before nibabel sees the file (see nifti_checks.check_path)."""
    try:
        NC.check_path(path)
    except NC.NiftiProblem as e:
        raise ScanError(str(e)) from None


def read_checked(path: Path, label: bool = False):
    """Check the header, then read the voxels in the file's own orientation: (header, data, notes).

    Images come back as float32 with NaN/Inf and extreme values set to 0 (noted); with `label=True`
    as uint8 (integer values 0..255 required, an empty label map allowed). Nothing is read before
    the header passed (nifti_checks.read_header).
    """
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
    return header, data, notes


def _same_kind_image(header, data, affine):
    """A NIfTI-1 image of `data` with the source's header (codes, units, description), scaling reset."""
    import nibabel as nib

    img = header.img
    hdr = img.header.copy() if isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)) else None
    if hdr is not None:
        hdr.set_data_shape(data.shape)
    out = nib.Nifti1Image(data, affine, hdr)
    out.header.set_data_dtype(data.dtype)
    out.header.set_slope_inter(1, 0)
    return out


def load_volume(path: Path, label: bool = False):
    """Check, load and reorient one file to the closest RAS orientation; returns (nibabel image, notes)."""
    import nibabel as nib

    header, data, notes = read_checked(path, label)
    out = _same_kind_image(header, data, header.affine)
    canon = nib.as_closest_canonical(out)
    if canon is not out:
        notes.append("reoriented to RAS")
    return canon, notes


def reasons_to_copy(path: Path, header, notes: list[str]) -> list[str]:
    """Why a scan cannot be referenced as it is and needs a fixed copy (empty: reference it): nnU-Net
    would read other voxels than the checks accepted (4D, NaN/Inf or extreme values cleaned), another
    orientation than RAS, an ambiguous geometry, or a path that nnU-Net expands as a variable."""
    import nibabel as nib

    why = list(notes)
    if not np.array_equal(nib.io_orientation(header.affine), nib.io_orientation(np.eye(4))):
        why.append(f"orientation {''.join(nib.aff2axcodes(header.affine))}, not RAS")
    hdr = header.img.header
    if hasattr(hdr, "get_qform"):
        q, qc = hdr.get_qform(coded=True)
        s_, sc = hdr.get_sform(coded=True)
        if qc and sc and not G.same_affine(q, s_):
            why.append("its qform and sform disagree (readers differ on which to use)")
    if "$" in str(path):
        why.append("'$' in its path (nnU-Net expands it as an environment variable)")
    return why


def resample_onto(img, ref):
    """`img` resampled (linear) onto the grid of `ref`."""
    import nibabel as nib

    return nib.Nifti1Image(G.resample_linear(img, ref.shape, ref.affine), ref.affine, ref.header.copy())


def brain_mask(img):
    """uint8 map of the non-zero voxels, in the image's grid and header."""
    import nibabel as nib

    data = np.asanyarray(img.dataobj)
    hdr = img.header.copy()
    hdr.set_data_dtype(np.uint8)
    return nib.Nifti1Image((data != 0).astype(np.uint8), img.affine, hdr)


# ------------------------------------------------------------------------------------ writing
STALE_TMP_SECONDS = 3600        # another machine's temporary file older than this is a leftover


def save_nifti(img, final: Path) -> None:
    """Write a NIfTI (reproducible bytes) atomically, with the mode the umask gives. Images take gzip
    level 1 (fast on noisy floats); label maps (uint8) level 6, which makes a real brain mask about
    2.5 times smaller than level 1 for a few hundredths of a CPU second."""
    import nibabel as nib

    level = 6 if img.get_data_dtype() == np.uint8 else 1
    with A.replacing(final) as tmp:
        with open(tmp, "xb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=level,
                                                   mtime=0) as gz:
            img.to_file_map({"image": nib.FileHolder(fileobj=gz)})


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
            candidates = [e for e in it if e.name.startswith(".") and e.name.endswith(A.TMP_SUFFIX) and e.is_file()]
        for e in candidates:
            try:
                if A.is_leftover(A.tag_of_temporary(e.name), e.stat().st_mtime, STALE_TMP_SECONDS, now):
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
        A.write_json(record, folder / RECORDS / f"{record['case']}.json")
    except BaseException:
        for p in done:
            p.unlink(missing_ok=True)
        raise


def _skip_record(folder: Path, record: dict, reason: str, path) -> dict:
    record.update(status="skipped", reason=reason, path=str(path))
    A.write_json(record, folder / RECORDS / f"{record['case']}.json")
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


def _pending(items, folder: Path, records: dict, shard_i: int, shard_n: int, result, storage: str = COPY):
    """The items (with .case_id) of this shard that a previous run has not finished; counts both. A case
    converted earlier whose source files changed or vanished since (or that was stored the other way)
    loses its files and record first: it is converted again, or skipped with the reason."""
    for i, item in enumerate(items):
        if i % shard_n != shard_i:
            continue
        result.in_shard += 1
        rec = records.get(item.case_id)
        if _finished(folder, rec, storage):
            result.already_done += 1
            continue
        if rec and rec.get("status") == "ok":
            _discard(folder, rec)
            result.redone.append(item.case_id)
        yield item


def _finished(folder: Path, rec: dict | None, storage: str = COPY) -> bool:
    return (bool(rec) and rec.get("status") == "ok" and rec.get("storage", COPY) == storage
            and all((folder / r).is_file() for r in rec.get("outputs", []))
            and _sources_unchanged(rec))


def _discard(folder: Path, rec: dict) -> None:
    """Remove a case's record, then its files: never a record saying 'ok' without its files."""
    (folder / RECORDS / f"{rec['case']}.json").unlink(missing_ok=True)
    for rel in rec.get("outputs", []):
        (folder / rel).unlink(missing_ok=True)


def source_stamps(paths) -> dict[str, list[int]]:
    """{path: [size, mtime_ns]} of the files a case was made from, as they were when it was converted."""
    out = {}
    for p in paths:
        st = os.stat(p)
        out[str(p)] = [st.st_size, st.st_mtime_ns]
    return out


def _stamps_before_reading(paths) -> dict[str, list[int]]:
    """source_stamps taken before the files are read (a file replaced meanwhile is converted again by
    the next run); a file that cannot be stat'ed gets no stamp, and its reading fails with the reason."""
    try:
        return source_stamps(paths)
    except OSError:
        return {}


def _sources_unchanged(rec: dict) -> bool:
    """The case's source files are still there with the size and time they had (records written before
    the sources were recorded count as unchanged)."""
    for path, (size, mtime_ns) in (rec.get("sources") or {}).items():
        try:
            st = os.stat(path)
        except OSError:
            return False
        if st.st_size != size or st.st_mtime_ns != mtime_ns:
            return False
    return True


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
    redone: list[str] = field(default_factory=list)     # cases whose source changed since, converted again
    leftovers: list[str] = field(default_factory=list)  # temporary files of interrupted runs, removed
    report: dict = field(default_factory=dict)


PARENT_POLL_SECONDS = W.PARENT_POLL_SECONDS
Interrupted = W.Interrupted


def _run_jobs(fn, jobs: list, num_processes: int, progress: bool, desc: str, folder: Path | None = None) -> list:
    """The case jobs in worker processes (fomo_nnunet.data.workers). A job lost with its worker (out of
    memory, a signal) is reported as skipped without a record, so a rerun tries it again; the temporary
    files of workers that had to be killed are removed from `folder`."""
    def lost(job, reason):
        item = next(x for x in job if hasattr(x, "case_id"))    # the PretrainScan or TaskCase in the job
        return {"case": item.case_id, "status": "skipped", "reason": reason,
                "path": str(getattr(item, "path", getattr(item, "image_dir", "")))}

    return W.run_jobs(fn, jobs, num_processes, progress, desc,
                      on_killed=(lambda pids: remove_leftovers(folder)) if folder is not None else None,
                      on_lost=lost if folder is not None else None)


def _summarise(folder: Path, result: ConvertResult, records: dict[str, dict], extra: dict) -> dict:
    ok = {c: r for c, r in records.items() if r.get("status") == "ok"}
    skipped = [{"case": c, "path": r.get("path", ""), "reason": r.get("reason", "")}
               for c, r in sorted(records.items()) if r.get("status") == "skipped"]
    removed = [{"case": c, "path": r.get("path", ""), "reason": r.get("reason", "")}
               for c, r in sorted(records.items()) if r.get("status") == REMOVED]
    notes = {c: r["notes"] for c, r in sorted(ok.items()) if r.get("notes")}
    fixed = {c: r["fixed_copy"] for c, r in sorted(ok.items()) if r.get("fixed_copy")}
    report = {"dataset": folder.name, **extra, "converted": len(ok), "skipped": result.listing + skipped,
              "removed": removed, "notes": notes, **({"fixed_copies": fixed} if fixed else {})}
    A.write_json(report, folder / REPORT)
    result.report = report
    return report


REMOVED = "removed"


def reconcile(folder: Path, records: dict[str, dict], case_ids: set[str], listing: list[dict] = ()) -> list[str]:
    """Cases converted earlier whose source is gone: their record says 'removed' (listed in the report
    until the source comes back), then their files are deleted. The reason names a folder that could
    not be listed this time when the case lies in it. Returns their ids."""
    unlisted = [(p["path"].rstrip(os.sep) + os.sep, p["reason"]) for p in listing if p.get("path")]
    gone = []
    for case, rec in sorted(records.items()):
        if case in case_ids or rec.get("status") == REMOVED:
            continue
        path = rec.get("path") or next(iter((rec.get("files") or {}).values()), "")
        why = next((f"its folder {d.rstrip(os.sep)} cannot be read now ({r.split(';')[0]})"
                    for d, r in unlisted if str(path).startswith(d)),
                   "the source is gone (deleted or renamed since an earlier conversion)")
        new = {"case": case, "status": REMOVED, "path": path,
               "reason": f"{why}; {'its files were removed' if rec.get('status') == 'ok' else 'it had been skipped'}"}
        A.write_json(new, folder / RECORDS / f"{case}.json")
        for rel in rec.get("outputs", []):
            (folder / rel).unlink(missing_ok=True)
        records[case] = new
        gone.append(case)
    return gone


def _prepare(folder: Path, result: ConvertResult, case_ids: set[str]) -> dict[str, dict]:
    """Before converting: leftovers of interrupted runs removed, the records reconciled with the source."""
    result.leftovers = remove_leftovers(folder)
    records = _load_records(folder)
    result.removed = reconcile(folder, records, case_ids, result.listing)
    return records


# ---------------------------------------------------------------------------------- pretraining
def _pretrain_job(job: tuple) -> dict:
    """One scan: checked, then either referenced where it is (only its brain mask is written, in the
    scan's own grid and header) or, with --copy or when it cannot be read as it is, copied as float32
    RAS with its mask."""
    folder, scan, meta, storage = job
    folder = Path(folder)
    rec = {"case": scan.case_id, "source": scan.source, "subject": scan.subject, "session": scan.session,
           "sequence": scan.sequence, "stem": scan.stem, "path": str(scan.path), **meta}
    try:
        stamps = _stamps_before_reading([scan.path])
        header, data, notes = read_checked(scan.path)
    except ScanError as e:
        return _skip_record(folder, rec, str(e), scan.path)
    label = f"labelsTr/{scan.case_id}{FILE_ENDING}"
    rec.update(status="ok", storage=storage, sources=stamps)
    fix = reasons_to_copy(scan.path, header, notes) if storage == REFERENCE else []
    if storage == REFERENCE and not fix:
        rec.update(notes=notes, image=str(Path(scan.path).absolute()))
        native = _same_kind_image(header, data, header.affine)
        _write_case(folder, [(brain_mask(native), label)], rec)
        return rec
    import nibabel as nib

    native = _same_kind_image(header, data, header.affine)
    img = nib.as_closest_canonical(native)
    if img is not native and not fix:
        notes = notes + ["reoriented to RAS"]
    image = f"imagesTr/{scan.case_id}_0000{FILE_ENDING}"
    rec.update(notes=notes + ([f"copied: {'; '.join(fix)}"] if fix else []), image=image)
    if fix:
        rec["fixed_copy"] = fix
    _write_case(folder, [(img, image), (brain_mask(img), label)], rec)
    return rec


def convert_pretrain(src, dataset_id: int = T.PRETRAIN_DATASET_ID, name: str | None = None,
                     layout: str | None = None, num_processes: int = 1, shard=None,
                     progress: bool = True, copy: bool = False) -> ConvertResult:
    """Convert a FOMO60K/FOMO300K tree into nnUNet_raw/DatasetNNN_name (one case per scan): each scan
    referenced where it is in dataset.json's `dataset` entry (only its brain mask written), or copied
    into imagesTr with `copy=True` or when it cannot be read as it is (`reasons_to_copy`)."""
    storage = COPY if copy else REFERENCE
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
    for scan in _pending(scans, folder, records, shard_i, shard_n, result, storage):
        meta = {"participant": participants.metadata(scan.subject, scan.session, scan.source)}
        info = mri_info.get((scan.source, scan.subject, scan.session)) or \
            mri_info.get(("", scan.subject, scan.session)) or []
        info = [r for r in info if str(r.get("scan", r.get("filename", r.get("sequence", scan.stem)))).split(".")[0]
                in (scan.stem, scan.sequence)] or ([] if len(info) != 1 else info)
        if info:
            meta["mri_info"] = info[0] if len(info) == 1 else info
        jobs.append((str(folder), scan, meta, storage))
    _tally(_run_jobs(_pretrain_job, jobs, num_processes, progress, f"convert {folder.name}", folder), result)
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
    if any(r.get("storage") == REFERENCE for r in ok.values()):
        # nnU-Net reads the cases from here (absolute paths as they are, relative ones from this folder)
        dataset["fomo_storage"] = REFERENCE
        dataset["dataset"] = {c: {"images": [r.get("image") or f"imagesTr/{c}_0000{FILE_ENDING}"],
                                  "label": f"labelsTr/{c}{FILE_ENDING}"} for c, r in ok.items()}
    else:
        dataset["fomo_storage"] = COPY
    A.write_json(subjects, folder / "subjects.json")
    A.write_json(dataset, folder / "dataset.json")
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
    stamps = _stamps_before_reading([*case.files.values(), case.label])
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
        elif not G.same_grid(img.shape, img.affine, ref.shape, ref.affine):  # the entry's rule too
            notes.append(f"{ch.name}: grid differs from {task.channels[0].name} ("
                         f"{G.describe_grid_difference(img.shape[:3], img.affine, ref.shape[:3], ref.affine)}); "
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
        if not G.same_grid(seg.shape, seg.affine, ref.shape, ref.affine):
            return _skip_record(folder, rec, "segmentation grid differs from the images' ("
                                + G.describe_grid_difference(seg.shape[:3], seg.affine, ref.shape[:3], ref.affine)
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
    rec.update(status="ok", notes=notes, sources=stamps)
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
    _tally(_run_jobs(_task_job, jobs, num_processes, progress, f"convert {folder.name}", folder), result)
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
    A.write_json(dataset, folder / "dataset.json")
    if task.kind != T.SEGMENTATION:
        A.write_json({c: r.get("target") for c, r in train.items()}, folder / "targets.json")
        if test:
            A.write_json({c: r.get("target") for c, r in test.items()}, folder / "targetsTs.json")
    A.write_json({c: {**(r.get("attributes") or {}), "split": r["split"]} for c, r in ok.items()},
               folder / "attributes.json")
    A.write_json({c: {"subject": r["subject"], "session": r["session"], "split": r["split"], "files": r["files"],
                    **({"label": r["label"]} if task.kind == T.SEGMENTATION else {})}
                for c, r in ok.items()}, folder / "subjects.json")
    return _summarise(folder, result, records, {"task": task.key, "kind": task.kind,
                                                "train": len(train), "test": len(test)})
