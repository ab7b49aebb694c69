"""Turning a results directory into answers: steps, curves, speedup and crossover, roofline, reports."""
