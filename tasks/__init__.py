"""Task plugins: one module or subpackage per task, registered with ``@register_task``."""
