"""What the plant's monitoring reads: Prometheus metrics at /metrics and the health at /health."""
