"""Scoring predictions: the FOMO26 metrics, scoring a folder of predictions against ground truth, and the
linear probe on frozen embeddings."""
