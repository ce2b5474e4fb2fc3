"""What each tissue looks like in each sequence: the tissue classes and their mean intensities.

An image is rendered as the sum over classes of (class probability x class mean), so these tables
are the whole contrast model. The means are relative (white matter near 1 on T1) and follow the
textbook appearance of each sequence: CSF dark on T1 and FLAIR and bright on T2; acute infarcts
bright on diffusion-weighted images and dark on the ADC map (Schaefer, Grant and Gonzalez,
"Diffusion-weighted MR imaging of the brain", Radiology 2000); white-matter hyperintensities
bright on T2 and brightest on FLAIR (Wardlaw et al., "Neuroimaging standards for research into small
vessel disease", Lancet Neurology 2013); veins and blood products dark on SWI and T2*.
Each scanner tweaks these means a little (see sources.py).
"""
from __future__ import annotations

# Tissue/pathology classes and their mean intensity per sequence (relative units).
CLASSES = ("csf", "xcsf", "gm", "wm", "bone", "marrow", "fat", "infarct", "wmh", "mening",
           "tumor", "edema", "nerve", "vessel")
SEQ_MEANS: dict[str, dict[str, float]] = {
    "t1":    dict(csf=.22, xcsf=.22, gm=.58, wm=.88, bone=.04, marrow=.75, fat=1.0, infarct=.42, wmh=.70,
                  mening=.55, tumor=.45, edema=.55, nerve=.55, vessel=.25),
    "t2":    dict(csf=1.0, xcsf=1.0, gm=.55, wm=.40, bone=.04, marrow=.50, fat=.80, infarct=.85, wmh=.80,
                  mening=.62, tumor=.72, edema=.90, nerve=.30, vessel=.08),
    "flair": dict(csf=.08, xcsf=.08, gm=.75, wm=.55, bone=.04, marrow=.50, fat=.75, infarct=.95, wmh=1.15,
                  mening=1.25, tumor=1.0, edema=1.15, nerve=.40, vessel=.15),
    "dwi":   dict(csf=.15, xcsf=.15, gm=.62, wm=.52, bone=.02, marrow=.10, fat=.08, infarct=1.7, wmh=.58,
                  mening=.80, tumor=.72, edema=.50, nerve=.5, vessel=.1),
    "adc":   dict(csf=3.0, xcsf=3.0, gm=.85, wm=.75, bone=.05, marrow=.30, fat=.10, infarct=.38, wmh=1.05,
                  mening=.80, tumor=1.10, edema=1.40, nerve=.9, vessel=.5),
    "swi":   dict(csf=.90, xcsf=.90, gm=.62, wm=.70, bone=.04, marrow=.30, fat=.60, infarct=.55, wmh=.72,
                  mening=.50, tumor=.55, edema=.75, nerve=.6, vessel=.1),
    "t2s":   dict(csf=1.0, xcsf=1.0, gm=.62, wm=.50, bone=.04, marrow=.35, fat=.55, infarct=.70, wmh=.70,
                  mening=.55, tumor=.65, edema=.80, nerve=.5, vessel=.15),
}
# Veins / blood products darken these sequences multiplicatively.
VEIN_DARKENING = {"swi": 0.75, "t2s": 0.5}
SEQ_GAIN = {"adc": 1000.0}  # ADC in 1e-6 mm^2/s like clinical maps
# Sequences whose vessels may be bright instead of flow voids (a property of the source or the case).
BRIGHT_VESSEL_SEQS = ("t2", "t2s")
# FOMO300K name -> our rendering key; finetune stems -> rendering key.
PRETRAIN_RENDER = {"t1w": "t1", "t2w": "t2", "flair": "flair", "dwi": "dwi", "adc": "adc", "swi": "swi",
                   "t2s": "t2s"}
STEM_RENDER = {"t1": "t1", "t2": "t2", "flair": "flair", "dwi_b1000": "dwi", "adc": "adc", "swi": "swi",
               "t2s": "t2s"}
TE_TR = {  # sequence -> (TE ms, TR ms) at 3T; 1.5T tweaks in echo_times()
    "t1w": (2.5, 2000.0), "t2w": (90.0, 4000.0), "flair": (120.0, 9000.0), "dwi": (70.0, 5000.0),
    "adc": (70.0, 5000.0), "swi": (20.0, 28.0), "t2s": (20.0, 600.0)}


def echo_times(sequence: str, field_strength: float) -> tuple[float, float]:
    """(TE, TR) in ms recorded for a pretraining scan, a little longer at 1.5 T."""
    te, tr = TE_TR[sequence]
    if field_strength < 2:
        te, tr = te * 1.1, tr * 1.05
    return round(te, 1), round(tr, 1)
