"""Dataset formats: readers of the public datasets' own layouts, and synthetic generators of them."""
