"""Formats and plumbing shared by every job: files, manifests, outputs, records, datasets, reducer artifacts, runners."""
