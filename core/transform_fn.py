"""Reading a tf.Transform result back as numpy: the analyzers' values, and the transform applied to rows.

tf.Transform writes its result as a TF1 SavedModel (``transform_fn``) in
which analyzer results are constants. The preprocessing functions of this
project name the results they need (``tf.identity(..., name=...)``), and
this module reads exactly those tensors out of a transform_fn the running
job has just written into its own temporary or output directory.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import uuid

import numpy as np

from core.errors import ArtifactError


@contextlib.contextmanager
def workspace(base: str | None, prefix: str):
    """A fresh directory for tf.Transform's temporary files (under ``base`` or the system temp dir), removed after."""
    import tensorflow as tf

    path = os.path.join(base or tempfile.gettempdir(), f"{prefix}-{uuid.uuid4().hex[:12]}")
    try:
        yield path
    finally:
        if tf.io.gfile.exists(path):
            tf.io.gfile.rmtree(path)


def read(transform_fn_dir: str, names: tuple[str, ...], probe: tuple[str, str, np.ndarray] | None = None) -> dict:
    """``{name: array}`` of the named analyzer results; with ``probe`` (input, output, rows) also the output."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.load(session, ["transform"], transform_fn_dir)
        tensors = {}
        for wanted in names:
            found = [op.name for op in graph.get_operations() if op.name.split("/")[-1] == wanted]
            if len(found) != 1:
                raise ArtifactError(f"{transform_fn_dir}: expected one '{wanted}' tensor, found {found}")
            tensors[wanted] = found[0] + ":0"
        values = {k: np.asarray(v) for k, v in session.run(tensors).items()}
        if probe is not None:
            signature = next(iter(meta.signature_def.values()))
            source, target, rows = probe
            values[target] = session.run(signature.outputs[target].name,
                                         feed_dict={signature.inputs[source].name: rows})
    return values
