"""Synthetic data in the official layouts, deterministic by seed, small, learnable by a CNN."""
