"""Data layer: canonical schema, readers for MovieLens-100k and user files, synthetic data, sequences."""
