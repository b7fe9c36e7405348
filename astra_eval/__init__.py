"""Evaluation and reports: strict scoring, calibration, abstention, Markdown and HTML pages.

Imports neither jax nor torch, so verdicts from any machine can be scored anywhere.
"""
