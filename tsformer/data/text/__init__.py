"""Long-document data: readers by format, splits and DataModules (see :mod:`tsformer.data`)."""
