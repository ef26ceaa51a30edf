"""Task plugins: one module or subpackage per task, registered by name (``medsight.registry``)."""
