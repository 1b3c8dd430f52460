"""Offline evaluation: leave-one-out full-ranking metrics, baselines and ablations."""
