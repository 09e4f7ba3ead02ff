"""Evaluation of generated images: metrics that need no downloaded weights, with intervals."""
