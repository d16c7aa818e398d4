"""Training: the two-stage LLaVA recipe (docs/method.md, "Training recipe") on accelerate."""
