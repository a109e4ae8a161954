"""NeuMeta Serve: the HTTP service around neumeta_core."""
