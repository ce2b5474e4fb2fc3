"""Files in and out, shared by every stage: NIfTI header checks."""
