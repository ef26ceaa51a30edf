"""Data: dataset formats, loading, transforms, caches and the data check."""
