"""Features of a training run around the Lightning loop: the time budget and resuming killed runs."""
