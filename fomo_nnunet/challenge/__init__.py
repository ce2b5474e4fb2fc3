"""The submission: the model bundle, prediction for image-level models and embeddings, mirroring, and the
challenge container's entry (`fomo-nnunet fomo26`) with its input and output rules."""
