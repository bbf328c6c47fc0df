"""The local scoring backend: how inputs are grouped into forwards (``batching``)."""
