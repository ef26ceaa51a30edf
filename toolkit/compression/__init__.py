"""Compression: int8, half-precision weights, pruning, distillation, measured before and after."""
