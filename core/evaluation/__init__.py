"""Evaluation in numpy and plain file reading: metrics, drift, reports, STS and golden-set loaders."""
