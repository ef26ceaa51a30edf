"""Task plugins. Each registers itself with ``@register_task`` and is listed under the entry-point
group ``medsight.tasks``, so the CLI finds it without the toolkit naming it."""
