"""Small helpers several rooms share (device choice, timing, figures, tables). Imports nothing of the package."""
