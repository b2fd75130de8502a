"""Speech recognition data: corpus readers, features and DataModules (see :mod:`tsformer.data`)."""
