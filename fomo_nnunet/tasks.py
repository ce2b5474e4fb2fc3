"""The seven FOMO26 downstream tasks, defined once.

Converter, planner, trainers, the `fomo26` entry point and evaluation ask this table instead of
repeating what a task is. Facts come from the challenge's public pages (fomo26 on the MICCAI 2026 challenge site and github.com/fomo26).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Kinds of task.
SEGMENTATION = "segmentation"
CLASSIFICATION = "classification"
REGRESSION = "regression"
EMBEDDING = "embedding"
KINDS = (SEGMENTATION, CLASSIFICATION, REGRESSION, EMBEDDING)

# Output formats the official validator checks.
OUT_PROBABILITY_TXT = "txt_probability"   # one finite float in [0, 1]
OUT_VALUE_TXT = "txt_value"               # one finite float
OUT_LABEL_NIFTI = "nifti_labels"          # integer NIfTI in the geometry of an input
OUT_EMBEDDING_NPY = "npy_embedding"       # 1-D finite float32 vector of constant length


@dataclass(frozen=True)
class Channel:
    """One input channel of a task.

    `name` is the channel name written to dataset.json; `cli_args` are the container's argument
    names that can fill it (two for the t2s-or-swi alternative: exactly one must be given);
    `file_stems` are the file names (without .nii.gz) that can fill it in the FOMO finetuning
    layout, in order of preference.
    """

    name: str
    cli_args: tuple[str, ...]
    file_stems: tuple[str, ...]

    @property
    def is_alternative(self) -> bool:
        return len(self.cli_args) > 1


@dataclass(frozen=True)
class Task:
    number: int
    name: str
    kind: str
    channels: tuple[Channel, ...]
    output: str
    metrics: tuple[str, ...]
    # Segmentation: label name -> value, background first (nnU-Net's dataset.json "labels").
    labels: dict[str, int] = field(default_factory=dict)
    # Classification: class names, index = class value in label.txt.
    classes: tuple[str, ...] = ()
    # Regression: unit of the target.
    unit: str = ""
    # Tasks whose model is another task's (6 and 7 share the embedding).
    shares_model_with: int | None = None
    description: str = ""
    # FOMO-Synth (fomo_nnunet.data.synth): how a synthetic case of this task is made.
    # Lesion kind drawn per class of the target (index = class); one entry: the same for every case.
    synth_lesions: tuple[str, ...] = ("none",)
    # Classification: share of positive cases in a split.
    synth_positive_fraction: float = 0.5
    # Ages of the cases (None: adults of 30-85); a brain-age target spreads them evenly over the range.
    synth_age_range: tuple[float, float] | None = None
    # Share of women (None: half).
    synth_female_fraction: float | None = None
    # Age-related white-matter hyperintensities besides the lesion: "age", "brain_age" (more, from the
    # brain's own age), "none".
    synth_wmh: str = "age"
    # Sequences the single input of an any-sequence task is drawn from.
    synth_sequences: tuple[str, ...] = ()
    # Skull-stripped (True), head kept (False) as the organisers' test data, or None: as the source does.
    synth_skull_stripped: bool | None = None
    # Acquired without thick slices (a high-resolution 3D sequence).
    synth_isotropic: bool = False
    # Chance per case that vessels are bright on T2 (None: as the source does).
    synth_vessel_bright: float | None = None
    # Train cases as a multiple of the preset's few-shot size: FOMO25 gave 200 brain-age training cases
    # against 21 (infarct) and 23 (meningioma) (https://fomo25.github.io), about ten times as many.
    synth_train_factor: int = 1

    @property
    def key(self) -> str:
        return f"task{self.number}"

    @property
    def default_dataset_id(self) -> int:
        return PRETRAIN_DATASET_ID + self.number

    @property
    def dataset_name(self) -> str:
        return f"Dataset{self.default_dataset_id:03d}_FOMO{self.number}{self.name.capitalize()}"

    @property
    def cli_args(self) -> tuple[str, ...]:
        return tuple(a for c in self.channels for a in c.cli_args)

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.channels)

    @property
    def max_label(self) -> int:
        return max(self.labels.values()) if self.labels else 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_image_target(self) -> bool:
        """True where each case has one image-level target (label.txt), not a mask."""
        return self.kind in (CLASSIFICATION, REGRESSION)


PRETRAIN_DATASET_ID = 900
PRETRAIN_DATASET_NAME = "Dataset900_FOMOPretrain"

FLAIR = Channel("flair", ("flair",), ("flair",))
DWI = Channel("dwi", ("dwi",), ("dwi_b1000", "dwi"))
ADC = Channel("adc", ("adc",), ("adc",))
# t2s and swi both show blood products and share one channel; a case has one or the other.
SWI_OR_T2S = Channel("t2s_or_swi", ("t2s", "swi"), ("t2s", "swi"))
T1 = Channel("t1", ("t1",), ("t1",))
T2 = Channel("t2", ("t2",), ("t2",))
ANY = Channel("input", ("input",), ("input", "t1", "t2", "flair", "dwi_b1000", "dwi", "adc", "swi", "t2s"))

TASKS: tuple[Task, ...] = (
    Task(1, "infarct", CLASSIFICATION, (FLAIR, DWI, ADC, SWI_OR_T2S), OUT_PROBABILITY_TXT,
         ("auroc",), classes=("no_infarct", "infarct"),
         description="infarct yes/no from FLAIR, DWI, ADC and T2*/SWI",
         synth_lesions=("none", "infarct"), synth_positive_fraction=0.6, synth_age_range=(45.0, 90.0),
         synth_skull_stripped=True),
    Task(2, "meningioma", SEGMENTATION, (FLAIR, DWI, SWI_OR_T2S), OUT_LABEL_NIFTI,
         ("dice", "nsd"), labels={"background": 0, "meningioma": 1},
         description="meningioma segmentation from FLAIR, DWI and T2*/SWI",
         synth_lesions=("meningioma",), synth_female_fraction=0.67, synth_skull_stripped=False),
    Task(3, "brainage", REGRESSION, (T1,), OUT_VALUE_TXT, ("mae", "pearson_r"), unit="years",
         description="brain age in years from T1",
         synth_age_range=(20.0, 90.0), synth_wmh="brain_age", synth_skull_stripped=True, synth_train_factor=10),
    # Which of labels 1/2 is nerve and which vessels is not public; we use 1 = nerve, 2 = vessel.
    Task(4, "trigeminal", SEGMENTATION, (T2,), OUT_LABEL_NIFTI, ("dice", "nsd"),
         labels={"background": 0, "nerve": 1, "vessel": 2},
         description="trigeminal nerve and vessel segmentation from T2",
         synth_lesions=("trigeminal",), synth_skull_stripped=False, synth_isotropic=True,
         synth_vessel_bright=0.3),
    Task(5, "polymicrogyria", CLASSIFICATION, (T1,), OUT_PROBABILITY_TXT, ("auroc",),
         classes=("normal", "polymicrogyria"),
         description="polymicrogyria yes/no from T1",
         synth_lesions=("none", "pmg"), synth_age_range=(5.0, 60.0), synth_wmh="none",
         synth_skull_stripped=False),
    Task(6, "probing", EMBEDDING, (ANY,), OUT_EMBEDDING_NPY, ("macro_auroc", "macro_f1"),
         description="frozen embedding of any single sequence, scored by a linear probe",
         synth_lesions=("none", "wmh", "tumor"), synth_sequences=("t1", "t2", "flair")),
    Task(7, "fairness", EMBEDDING, (ANY,), OUT_EMBEDDING_NPY,
         ("macro_auroc", "macro_f1", "fairness_score"), shares_model_with=6,
         description="the task-6 embedding, probe scored per demographic group",
         synth_lesions=("none", "wmh", "tumor"), synth_sequences=("t1", "t2", "flair")),
)

TASKS_BY_NUMBER = {t.number: t for t in TASKS}
TASKS_BY_NAME = {t.name: t for t in TASKS}

# Volumes with fewer voxels than this along any axis are dropped (as FOMO300K does).
MIN_SLICES = 15

# Sequences of the pretraining corpus: FOMO60K file names -> FOMO300K names.
FOMO60K_TO_300K = {"t1": "t1w", "t2": "t2w", "flair": "flair", "dwi": "dwi", "dwi_b1000": "dwi",
                   "adc": "adc", "swi": "swi", "t2s": "t2s"}


def get_task(key: str | int) -> Task:
    """Look a task up by number (2), key ('task2') or name ('meningioma')."""
    if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
        n = int(key)
        if n in TASKS_BY_NUMBER:
            return TASKS_BY_NUMBER[n]
    elif key.startswith("task") and key[4:].isdigit() and int(key[4:]) in TASKS_BY_NUMBER:
        return TASKS_BY_NUMBER[int(key[4:])]
    elif key.lower() in TASKS_BY_NAME:
        return TASKS_BY_NAME[key.lower()]
    known = ", ".join(f"{t.key} ({t.name})" for t in TASKS)
    raise KeyError(f"unknown task {key!r}; known tasks: {known}")


def task_choices() -> list[str]:
    """Names a CLI accepts for a task: task1..task7 and the task names."""
    return [t.key for t in TASKS] + [t.name for t in TASKS]
