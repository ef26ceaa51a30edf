"""Training: the one trainer, its optimizer, run log and starting weights."""
