"""Models, datasets, site splits, local training and merge weighting."""
