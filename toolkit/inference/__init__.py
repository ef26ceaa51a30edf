"""Inference: loading a checkpoint as a model, predicting, evaluating, engines and export."""
