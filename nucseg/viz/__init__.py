"""Pictures of results: nucleus outlines for prediction, error maps for evaluation."""
