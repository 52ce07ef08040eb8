"""Runners: training, evaluating one cell, the sweep, reports."""
