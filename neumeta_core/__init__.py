"""NeuMeta core: the method (coordinates, hypernetwork, sampling, export), no HTTP, no Redis."""

__version__ = "0.1.0"
