"""tsformer: efficient-attention Transformers for forecasting, speech and long documents."""

__version__ = "0.1.0"
