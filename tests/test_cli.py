"""The console script: one-line errors, an interrupt is one line and exit 130, flags checked before work."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import InputError
from pipelines import cli, run, sample_corpus
from tests.hub_models import save_text_encoder

REPO = Path(__file__).resolve().parents[1]


def _raise(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as e:  # noqa: BLE001 - to get a traceback
        return e


def test_an_error_without_a_message_still_says_what_and_where():
    line = cli.one_line(_raise(AssertionError()))
    assert line.startswith("internal error: AssertionError at test_cli.py:") and "SHRINK_DEBUG=1" in line
    assert cli.one_line(_raise(ValueError("bad value"))) == "ValueError: bad value"
    wrapped = RuntimeError("Pipeline failed\nTraceback...\n"
                           "core.errors.DataError: shard x is damaged [while running 'R']")
    assert cli.one_line(wrapped) == "DataError: shard x is damaged"


@pytest.mark.parametrize("dim", ["0", "-3", "513"])
def test_run_rejects_an_output_dim_out_of_range_before_any_work(tmp_path, dim):
    with pytest.raises(InputError, match=r"--output_dim must be in 1\.\.512"):
        run.main(["--input", "x.txt", "--workdir", str(tmp_path / "w"), "--output_dim", dim])
    assert not (tmp_path / "w").exists()


@pytest.mark.slow  # a separate process interrupted mid-run: make test-slow
def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    hub = save_text_encoder(str(tmp_path / "hub"), 512)
    corpus = tmp_path / "corpus.txt"
    sample_corpus.write(str(corpus), 20_000, seed=1)
    process = subprocess.Popen([sys.executable, "-m", "pipelines.embed", "--input", str(corpus), "--output",
                                str(tmp_path / "out"), "--encoder", f"tfhub:{hub}", "--max_batch_size", "64"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "out" / ".shrink.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # inside the pipeline
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip() and not line[:2].isdigit()]
    assert process.returncode == 130, stderr[-3000:]
    assert lines == ["interrupted: the output is left incomplete (no manifest); run the same command again to "
                     "redo it"], stderr[-3000:]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_every_flag_takes_both_spellings_and_help_shows_one():
    from pipelines import embed

    for argv in (["--input", "a", "--output", "o", "--text_field", "t", "--allow_partial_files", "--no_overwrite"],
                 ["--input", "a", "--output", "o", "--text-field", "t", "--allow-partial-files", "--no-overwrite"]):
        config = cli.parse_config(embed.make_parser(), embed.EmbedConfig, argv, beam=False)[0]
        assert (config.text_field, config.allow_partial_files, config.overwrite) == ("t", True, False)
    text = embed.make_parser().format_help()
    assert "--text_field" in text and "--no_allow_partial_files" in text
    assert "--text-field" not in text and "--no-allow-partial-files" not in text


def test_run_reaches_every_step_flag_declared_once():
    config, _ = run.parse(["--input", "x.txt", "--workdir", "w", "--text-field", "headline",
                           "--embed.max_batch_size", "64", "--pca.no-center", "--train.batch_size=32",
                           "--no_download", "--epochs", "3", "--reduce.format", "parquet"])
    assert config.step("embed", input=("x",), output="o").max_batch_size == 64
    assert config.step("embed", input=("x",), output="o").text_field == "headline"
    assert config.step("pca", input="e", output="p").center is False
    assert (config.step("train", input="e").batch_size, config.step("train", input="e").epochs) == (32, 3)
    assert config.step("evaluate", embeddings="e", reducer=("p",), output="r").download is False
    assert config.step("reduce", reducer="p", output="r").format == "parquet"
    untouched = run.parse(["--input", "x.txt", "--workdir", "w"])[0]
    assert untouched.step("embed", input=("x",), output="o").max_batch_size == 1024  # the job's own default


@pytest.mark.parametrize("command", ["fit-pca", "fit-codec", "train", "run", "export"])
def test_help_comes_without_importing_tensorflow(command):
    result = subprocess.run([sys.executable, "-c", f"import sys; from pipelines import cli; "
                             f"cli.run_job(cli.COMMANDS[{command!r}][0], ['--help']); "
                             "print('tensorflow' in sys.modules)"], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.strip().endswith("False"), result.stdout[-500:] + result.stderr[-500:]
