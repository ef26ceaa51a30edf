"""Model sources: importers of published models (MONAI bundles, CheXNet, torchvision, torchxrayvision)."""
