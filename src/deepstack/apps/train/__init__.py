"""Training: the two-stage LLaVA recipe (DEEPSTACK.md, "Training recipe") on accelerate."""
