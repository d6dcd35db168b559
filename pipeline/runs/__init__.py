"""The runs stage: rules `train` (one training run, its checkpoints and its MLflow run) and
`evaluate` (a table cell's seeds aggregated)."""
