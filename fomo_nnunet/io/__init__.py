"""Files in and out, shared by every stage: atomic writes (`atomic`), voxel grids with the one tolerance that
conversion and the challenge entry share, and resampling (`grids`), and NIfTI header checks (`nifti_checks`)."""
