"""The data stage: rules `download` (the raw data and its manifest) and `split` (the labeled
indices of each label budget and seed)."""
