"""Beam jobs that embed a corpus and shrink its vectors (512 -> 128 dimensions)."""
