"""Training loops for MFL and SAL, sharing seeding, devices, checkpoints and early stopping (``common``)."""
