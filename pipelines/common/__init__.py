"""Formats and plumbing shared by every job: manifests, records, datasets, reducer artifacts, runners."""
