"""Looking at models and runs: per-layer parameters, size and operations (summary) and training and
evaluation throughput against the float network of the same topology (bench)."""
