"""The bottom library: files, manifests, outputs, records, datasets, artifacts as data, search, metrics, logs.

No Beam pipelines and no Keras: ``transforms``, ``trainer`` and ``pipelines`` build on it.
"""
