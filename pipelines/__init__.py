"""Jobs (one module per `shrink` command) and the libraries they share (``common``, ``evaluation``).

OpenMP threads (faiss) wait passively: spinning threads made product-quantization
training up to 40x slower whenever other processes share the cores (measured).
``python -m pipelines.<job>`` sets up the logs here, before the job module
imports TensorFlow (Python sets ``sys.argv[0]`` to "-m" while it finds the module).
"""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if sys.argv[:1] == ["-m"]:
    from core import logs

    logs.setup(verbose=bool({"-v", "--verbose"} & set(sys.argv)))
