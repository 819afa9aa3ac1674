"""Serving: inference, the MLflow pyfunc, the registry, the watermark, the swap CLI."""
