"""Benchmarks against the papers' own algorithms and diffusers' sampler (``python -m benchmarks.run``)."""
