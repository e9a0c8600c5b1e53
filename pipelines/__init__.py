"""Commands: ``cli`` and one module per ``shrink`` command, built on ``transforms``, ``trainer`` and ``core``.

``python -m pipelines.<job>`` sets up the logs here, before the job module
imports TensorFlow (Python sets ``sys.argv[0]`` to "-m" while it finds the module).
"""
import sys

import core  # noqa: F401 - sets the OpenMP wait policy before anything loads faiss

if sys.argv[:1] == ["-m"]:
    from core import logs

    logs.setup(verbose=bool({"-v", "--verbose"} & set(sys.argv)))
