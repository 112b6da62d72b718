"""Ensemble stock-return forecasting: the library (pure Python, no Ray imports)."""

__version__ = "0.1.0"
