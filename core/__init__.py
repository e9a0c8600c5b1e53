"""The bottom library: files, manifests, outputs, records, datasets, artifacts as data, search, metrics, logs.

No Beam pipelines and no Keras: ``transforms``, ``trainer`` and ``pipelines`` build on it.

OpenMP threads (faiss) wait passively: spinning threads made product-quantization
training up to 40x slower whenever other processes share the cores (measured), and
the spinning process slows every other one on those cores. Set here, before any
module of the library loads faiss (the OpenMP runtime reads it once, when loaded).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
