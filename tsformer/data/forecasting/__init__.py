"""Forecasting data: series file readers, windows and DataModules (see :mod:`tsformer.data`)."""
