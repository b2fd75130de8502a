"""tsformer's Hydra configs, shipped in the package and read as ``pkg://tsformer.conf``."""
