"""Beam jobs that embed a corpus and shrink its vectors (512 -> 128 dimensions)."""
import os

# TensorFlow's C++ INFO lines (oneDNN notices, CUDA probing) drown the jobs'
# own progress logs; warnings and errors still show. Users can override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
