"""Reading FOMO folders: the pretraining corpora (FOMO60K, FOMO300K) and the task folders.

Nothing here opens an image; this module only finds files, names cases and reads the metadata
tables. `fomo_nnunet.data.convert` loads, checks and writes.

Layouts (FOMO25 and FOMO26 challenge pages; FOMO60K and FOMO300K dataset cards):
- FOMO60K:  SRC/sub_1/ses_1/t1.nii.gz, repeats t1_2.nii.gz
- FOMO300K: SRC/PT001_<Source>/sub-01/ses-01/t1w.nii.gz (+ optional participants.tsv, mri_info.tsv)
- task:     SRC/preprocessed/sub_X/ses_1/<stem>.nii.gz + SRC/labels/sub_X/ses_1/{label.txt|seg.nii.gz},
            or the same under SRC/train/ and SRC/test/ (each with an optional participants.tsv)
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fomo_nnunet.tasks import EMBEDDING, FOMO60K_TO_300K, SEGMENTATION, Task

NIFTI_SUFFIXES = (".nii.gz", ".nii")
FOMO60K, FOMO300K = "fomo60k", "fomo300k"
LAYOUTS = (FOMO60K, FOMO300K)
FOMO60K_SOURCE = "FOMO60K"          # the source name given to FOMO60K scans (that corpus has none)
MAX_CASE_ID = 120                    # longer ids are cut and made unique with a hash
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_REPEAT = re.compile(r"^(?P<seq>.+?)_(?P<n>\d+)$")
_SOURCE_DIR = re.compile(r"^PT\d+_")


# ----------------------------------------------------------------------------------------- names
def nifti_stem(name: str) -> str | None:
    """'t1_2.nii.gz' -> 't1_2'; None for names that are not NIfTI."""
    for suf in NIFTI_SUFFIXES:
        if name.endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return None


def sanitize(text: str) -> str:
    """Only [A-Za-z0-9_-]; runs of anything else become one '_'; no leading/trailing '_' or '-'."""
    return _UNSAFE.sub("_", text).strip("_-") or "x"


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def unique_case_ids(raw_ids: list[str]) -> list[str]:
    """Safe, unique case ids for a list of raw ids (names joined from folder and file names).

    A raw id that is already safe is kept; one that needed sanitising (or is too long, or collides
    with another after sanitising) gets a short hash of the raw id appended, so the result depends
    only on the raw id, not on which other items exist (stable across shards and reruns) except
    for collisions, which are resolved the same way for every member.
    """
    out = []
    for raw in raw_ids:
        safe = sanitize(raw)
        if safe != raw or len(safe) > MAX_CASE_ID:
            safe = f"{safe[:MAX_CASE_ID - 9]}_{_short_hash(raw)}"
        out.append(safe)
    counts: dict[str, int] = {}
    for s in out:
        counts[s] = counts.get(s, 0) + 1
    final, seen = [], set()
    for raw, s in zip(raw_ids, out):
        if counts[s] > 1:
            s = f"{s[:MAX_CASE_ID - 9]}_{_short_hash(raw + '#dup')}"
        k = 2
        base = s
        while s in seen:  # identical raw ids (should not happen for distinct paths)
            s = f"{base}_{k}"
            k += 1
        seen.add(s)
        final.append(s)
    return final


def pretrain_sequence(stem: str, layout: str) -> str:
    """The FOMO300K sequence name of a file stem ('t1_2' in FOMO60K -> 't1w')."""
    if layout == FOMO60K:
        m = _REPEAT.match(stem)
        seq = m.group("seq") if m and m.group("seq") in FOMO60K_TO_300K else stem
        return FOMO60K_TO_300K.get(seq, seq)
    return stem


# ------------------------------------------------------------------------------------- listing
def _problem(problems: list | None, path, reason: str) -> None:
    if problems is not None:
        problems.append({"case": None, "path": str(path), "reason": reason})


def _scan(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def _subdirs(path: Path, problems: list | None = None, expected: str = "") -> list[Path]:
    """The visible sub-folders of `path` (links to folders followed). With `problems`, folders that
    cannot be listed and folder links that lead nowhere are recorded there with the reason; with
    `expected` (what the entries should be, e.g. "a subject folder") so are entries that are files."""
    out = []
    try:
        entries = _scan(path)
    except OSError as e:
        _problem(problems, path, f"cannot list folder: {e.strerror}; nothing in it was converted")
        return []
    for e in entries:
        if e.name.startswith("."):
            continue
        try:
            if e.is_dir():
                out.append(Path(e.path))
            else:
                if e.is_symlink() and nifti_stem(e.name) is None:
                    os.stat(e.path)  # raises for a link that leads nowhere
                if expected:
                    _problem(problems, e.path, f"not a folder ({expected} was expected here): ignored")
        except OSError as err:
            _problem(problems, e.path, f"cannot open folder link: {err.strerror}")
    return out


def _nifti_entries(path: Path, problems: list | None = None) -> list[Path]:
    """Entries named like NIfTI files, whatever they are (broken links and loops included: the
    converter reports them, rather than them silently vanishing). When one scan is there as both
    `.nii` and `.nii.gz`, the `.nii.gz` is used and the other recorded in `problems`."""
    entries = [Path(e.path) for e in _scan(path) if not e.name.startswith(".") and nifti_stem(e.name) is not None]
    by_stem: dict[str, list[Path]] = {}
    for p in entries:
        by_stem.setdefault(nifti_stem(p.name), []).append(p)
    out = []
    for stem, paths in by_stem.items():
        paths.sort(key=lambda p: not p.name.endswith(".nii.gz"))
        out.append(paths[0])
        for p in paths[1:]:
            _problem(problems, p, f"the same scan as {paths[0].name} (both .nii and .nii.gz are there): "
                                  f"{paths[0].name} was used")
    return sorted(out, key=lambda p: p.name)


def _nifti_entries_or_report(path: Path, problems: list | None) -> list[Path]:
    try:
        return _nifti_entries(path, problems)
    except OSError as e:
        _problem(problems, path, f"cannot list folder: {e.strerror}; nothing in it was converted")
        return []


# ---------------------------------------------------------------------------------- pretraining
@dataclass(frozen=True)
class PretrainScan:
    path: Path
    source: str
    subject: str
    session: str
    stem: str
    sequence: str
    case_id: str = ""

    @property
    def session_key(self) -> str:
        return f"{self.source}/{self.subject}/{self.session}"


def detect_layout(src: Path) -> str:
    """FOMO300K when top-level folders look like `PT001_<Source>` (or metadata tables exist),
    FOMO60K when they look like subjects holding sessions holding NIfTI files."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"no such folder: {src}")
    dirs = _subdirs(src)
    if any(_SOURCE_DIR.match(d.name) for d in dirs):
        return FOMO300K
    for d in dirs[:50]:
        for ses in _subdirs(d)[:5]:
            if _nifti_entries_or_report(ses, None):
                return FOMO60K
            for sub in _subdirs(ses)[:5]:
                if _nifti_entries_or_report(sub, None):
                    return FOMO300K
    if (src / "participants.tsv").is_file() or (src / "mri_info.tsv").is_file():
        return FOMO300K
    raise ValueError(f"cannot tell the layout of {src}: expected FOMO60K (sub/ses/seq.nii.gz) or "
                     f"FOMO300K (PT001_Source/sub/ses/seq.nii.gz); pass --layout")


def list_pretrain_scans(src: Path, layout: str | None = None,
                        problems: list | None = None) -> tuple[str, list[PretrainScan]]:
    """All scans of a corpus in a stable sorted order, with safe unique case ids. Folders that cannot
    be listed and duplicate files are appended to `problems` ({case: None, path, reason})."""
    src = Path(src)
    layout = layout or detect_layout(src)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    found: list[tuple[Path, str, str, str, str]] = []
    if layout == FOMO60K:
        for sub in _subdirs(src, problems):
            for ses in _subdirs(sub, problems):
                for f in _nifti_entries_or_report(ses, problems):
                    found.append((f, FOMO60K_SOURCE, sub.name, ses.name, nifti_stem(f.name)))
    else:
        for source in _subdirs(src, problems):
            for sub in _subdirs(source, problems):
                for ses in _subdirs(sub, problems):
                    for f in _nifti_entries_or_report(ses, problems):
                        found.append((f, source.name, sub.name, ses.name, nifti_stem(f.name)))
    raw_ids = [f"{sub}_{ses}_{stem}" if layout == FOMO60K else f"{source}_{sub}_{ses}_{stem}"
               for _, source, sub, ses, stem in found]
    ids = unique_case_ids(raw_ids)
    scans = [PretrainScan(f, source, sub, ses, stem, pretrain_sequence(stem, layout), cid)
             for (f, source, sub, ses, stem), cid in zip(found, ids)]
    return layout, scans


# ---------------------------------------------------------------------------------- metadata
def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a tab-separated table with a header; [] when the file is missing."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items() if k}
                for row in csv.DictReader(f, delimiter="\t")]


def parse_value(v: str):
    """'42' -> 42, '42.5' -> 42.5, '' / 'n/a' -> None, anything else unchanged."""
    if v is None or v.strip().lower() in ("", "n/a", "na", "nan", "none", "null"):
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        x = float(v)
        return x if x == x and abs(x) != float("inf") else None
    except ValueError:
        return v


class ParticipantTable:
    """participants.tsv rows looked up by (subject, session), optionally within a source/dataset."""

    KEYS = ("dataset", "source", "participant_id", "session_id")

    def __init__(self, rows: list[dict[str, str]], source_column: str | None = None):
        self.source_column = source_column
        self.by_key: dict[tuple, dict] = {}
        for row in rows:
            pid, sid = row.get("participant_id", ""), row.get("session_id", "")
            if not pid:
                continue
            src = row.get(source_column, "") if source_column else ""
            self.by_key.setdefault((src, pid, sid), row)
            self.by_key.setdefault((src, pid, ""), row)

    def lookup(self, subject: str, session: str, source: str = "") -> dict | None:
        src = source if self.source_column else ""
        return self.by_key.get((src, subject, session)) or self.by_key.get((src, subject, ""))

    def metadata(self, subject: str, session: str, source: str = "") -> dict:
        """The non-key columns of the matching row, values parsed; {} when there is none."""
        row = self.lookup(subject, session, source)
        if not row:
            return {}
        skip = {"participant_id", "session_id"} | ({self.source_column} if self.source_column == "dataset" else set())
        return {k: parse_value(v) for k, v in row.items() if k not in skip}


def pretrain_participants(src: Path) -> ParticipantTable:
    return ParticipantTable(read_tsv(Path(src) / "participants.tsv"), source_column="dataset")


def pretrain_mri_info(src: Path) -> dict[tuple, list[dict]]:
    """mri_info.tsv rows grouped by (dataset, participant_id, session_id); columns vary, kept as given."""
    out: dict[tuple, list[dict]] = {}
    for row in read_tsv(Path(src) / "mri_info.tsv"):
        key = (row.get("dataset", ""), row.get("participant_id", ""), row.get("session_id", ""))
        out.setdefault(key, []).append({k: parse_value(v) for k, v in row.items()
                                        if k not in ("dataset", "participant_id", "session_id")})
    return out


# ------------------------------------------------------------------------------------- tasks
TRAIN, TEST = "train", "test"


@dataclass
class TaskCase:
    split: str
    subject: str
    session: str
    image_dir: Path
    label_dir: Path
    files: dict[str, Path] = field(default_factory=dict)   # channel name -> file
    label: Path | None = None                              # seg.nii.gz or label.txt
    attributes: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problem: str | None = None                             # reason to skip, found while listing
    case_id: str = ""


def task_splits(src: Path) -> list[tuple[str, Path]]:
    """[(split, folder holding preprocessed/ and labels/)]."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"no such folder: {src}")
    splits = [(s, src / s) for s in (TRAIN, TEST) if (src / s / "preprocessed").is_dir()]
    if splits:
        return splits
    if (src / "preprocessed").is_dir():
        return [(TRAIN, src)]
    raise ValueError(f"{src} is not a FOMO task folder: expected preprocessed/ and labels/ in it, "
                     f"or in train/ and test/")


def _channel_files(task: Task, ses_dir: Path, problems: list | None = None
                   ) -> tuple[dict[str, Path], list[str], str | None]:
    try:
        present = {nifti_stem(p.name): p for p in _nifti_entries(ses_dir, problems)}
    except OSError as e:
        return {}, [], f"cannot list the session folder {ses_dir}: {e.strerror}"
    files: dict[str, Path] = {}
    notes: list[str] = []
    for ch in task.channels:
        hits = [s for s in ch.file_stems if s in present]
        if hits:
            files[ch.name] = present[hits[0]]
            if len(hits) > 1:
                notes.append(f"channel {ch.name}: used {hits[0]}, ignored {', '.join(hits[1:])}")
        elif task.kind == EMBEDDING and len(task.channels) == 1 and len(present) == 1:
            (stem, p), = present.items()
            files[ch.name] = p
            notes.append(f"channel {ch.name}: filled by {stem}")
        else:
            return files, notes, (f"missing channel {ch.name}: none of "
                                  f"{', '.join(s + '.nii.gz' for s in ch.file_stems)} in {ses_dir}")
    return files, notes, None


def _label_file(task: Task, label_dir: Path) -> tuple[Path | None, str | None]:
    names = ("seg.nii.gz", "seg.nii") if task.kind == SEGMENTATION else ("label.txt",)
    for n in names:
        p = label_dir / n
        if os.path.lexists(p):
            return p, None
    return None, f"missing label: no {' or '.join(names)} in {label_dir}"


def list_task_cases(task: Task, src: Path, problems: list | None = None) -> list[TaskCase]:
    """Every session folder of a task tree, in stable order (train first), with its channel files
    and label; cases that cannot be used carry `problem`; folders that cannot be listed (subject
    level and above) and duplicate files are appended to `problems`."""
    cases: list[TaskCase] = []
    for split, root in task_splits(src):
        table = ParticipantTable(read_tsv(root / "participants.tsv") or read_tsv(Path(src) / "participants.tsv"))
        for sub in _subdirs(root / "preprocessed", problems, "a subject folder"):
            for ses in _subdirs(sub, problems, "a session folder"):
                label_dir = root / "labels" / sub.name / ses.name
                case = TaskCase(split, sub.name, ses.name, ses, label_dir)
                case.files, case.notes, case.problem = _channel_files(task, ses, problems)
                label, problem = _label_file(task, label_dir)
                case.label = label
                case.problem = case.problem or problem
                meta = table.metadata(sub.name, ses.name)
                case.attributes = {"sex": meta.pop("sex", None), "age": meta.pop("age", None),
                                   "source": meta.pop("source", None), **meta, "split": split}
                cases.append(case)
    # Train and test splits may both number their subjects from sub_1: test ids carry a prefix.
    ids = unique_case_ids([f"{'test_' if c.split == TEST else ''}{c.subject}_{c.session}" for c in cases])
    for c, cid in zip(cases, ids):
        c.case_id = cid
    return cases
