"""semisup: semi-supervised learning algorithms, data and training loop.

The library takes tensors and configs and returns metrics through a callback; it knows nothing
of Snakemake, DVC or MLflow (those live in the `pipeline` package).
"""
