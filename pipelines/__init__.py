"""Jobs (one module per `shrink` command) and the libraries they share (``common``, ``evaluation``).

OpenMP threads (faiss) wait passively: spinning threads made product-quantization
training up to 40x slower whenever other processes share the cores (measured).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
