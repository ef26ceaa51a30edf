"""The foundation every stage stands on: configuration, registries, geometry, device and precision, checkpoints, progress."""
