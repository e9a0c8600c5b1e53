"""File helpers and evaluation data on paths that are not local (the whole flow on one: tests/test_run.py).

``ram://`` (tests/ramfs.py) stands in for gs:// or s3://: Beam and tf.io.gfile
reach it, plain ``open``/``os.path``/``shutil`` do not. A leak would either fail
or write into the current directory under a literal ``ram:`` folder.
"""
from __future__ import annotations

import os

import pytest
import tensorflow as tf

from core import files
from core.evaluation import golden, sts
from tests.ramfs import copy_tree_to_ram  # registers ram:// with Beam

gfile = tf.io.gfile


def test_file_helpers_on_ram(tmp_path, in_tmp_cwd):
    root = f"ram://{tmp_path.name}/helpers"
    files.makedirs(files.join(root, "a"))
    files.makedirs(files.join(root, "a"))  # exists already: fine
    files.write_text(files.join(root, "a", "b", "x.json"), "{}")
    assert files.read_text(files.join(root, "a", "b", "x.json")) == "{}"
    assert files.list_files(files.join(root, "a", "b", "*")) == [files.join(root, "a", "b", "x.json")]
    assert files.list_tree(files.join(root, "a")) == [files.join(root, "a", "b", "x.json")]
    files.delete([files.join(root, "a", "b", "x.json")])
    files.delete([files.join(root, "a", "b", "x.json")])  # gone already: fine
    assert not files.exists(files.join(root, "a", "b", "x.json"))
    assert files.absolute("gs://bucket/x") == "gs://bucket/x"
    assert files.absolute("x") == os.path.join(str(tmp_path), "x")


def test_sts_and_golden_set_read_from_ram(tmp_path, shared_data, in_tmp_cwd):
    root = f"ram://{tmp_path.name}/data"
    copy_tree_to_ram(shared_data / "stsbenchmark", f"{root}/stsbenchmark")
    golden_dir = shared_data / "tatqa" / "derived_beir_paragraph_retrieval"
    copy_tree_to_ram(golden_dir, f"{root}/golden")
    assert sts.read_sts_dir(root) == sts.read_sts_dir(shared_data / "stsbenchmark")  # finds the subfolder
    assert golden.load_golden_set(f"{root}/golden", "dev") == golden.load_golden_set(golden_dir, "dev")
    with pytest.raises(FileNotFoundError, match="corpus.jsonl not found"):
        golden.load_golden_set(f"{root}/stsbenchmark")
