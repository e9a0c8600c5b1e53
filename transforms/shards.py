"""Reading the shards of datasets in Beam: exactly the files their manifests list, counted.

Each shard is read whole by one worker, in batches of ``batch_size`` raw
records (the batches, hence reduce's fixed-size reducer calls, depend only
on the shard list). A damaged record fails the job with the shard's name
and the position, not a dump of its bytes; the ``read`` counter is checked
against the manifests by the job when the pipeline is done.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.io import filebasedsink
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics

from core import files
from core.dataset import EmbeddingDataset
from core.errors import DataError


def read_records(path: str):
    """Every serialized record of one TFRecord shard, in order; DataError naming the shard on damage."""
    n = 0
    with files.open_read(path) as f:
        while True:
            try:
                record = _TFRecordUtil.read_record(f)
            except ValueError as e:  # Beam's message carries a hex dump of the bytes: keep its first words
                raise DataError(f"{path}: damaged record after {n} good ones ({str(e).split(':')[0]})") from None
            if record is None:
                return
            n += 1
            yield record


class _ReadShard(beam.DoFn):
    def __init__(self, namespace: str, batch_size: int):
        self.namespace, self.batch_size = namespace, batch_size

    def setup(self):
        self.read = Metrics.counter(self.namespace, "read")

    def process(self, element: tuple[int, str]):
        shard, path = element
        batch, number = [], 0
        for record in read_records(path):
            batch.append(record)
            if len(batch) == self.batch_size:
                self.read.inc(len(batch))
                yield (shard, number), batch
                batch, number = [], number + 1
        if batch:
            self.read.inc(len(batch))
            yield (shard, number), batch


class ReadShards(beam.PTransform):
    """Datasets -> ``((shard, batch number), [serialized records])`` batches; counter ``<namespace>/read``.

    The ``(shard, batch number)`` position lets a writer put rows back in a
    fixed order, whatever order the runner processed them in.
    """

    def __init__(self, datasets: list[EmbeddingDataset], namespace: str, batch_size: int = 1024):
        super().__init__()
        self.paths = [p for d in datasets for p in d.shards]
        self.namespace, self.batch_size = namespace, batch_size

    def expand(self, pbegin):
        return (pbegin
                | "ShardList" >> beam.Create(list(enumerate(self.paths)))
                | "SpreadShards" >> beam.Reshuffle()
                | "ReadShard" >> beam.ParDo(_ReadShard(self.namespace, self.batch_size)))


class _TFRecordBatchSink(filebasedsink.FileBasedSink):
    """TFRecord files written a list of records at a time.

    ``WriteToTFRecord`` takes one element per record; handing it whole
    batches instead measured about a third faster for the reduce job
    (benchmarks/bench_pca_reduce.py). Same framing: Beam's TFRecord writer.
    """

    def write_record(self, file_handle, value):
        for record in value:
            _TFRecordUtil.write_record(file_handle, record)


def write_tfrecord_batches(prefix: str, num_shards: int):
    """A Beam write of elements that are lists of serialized records, as ``prefix-SSSSS-of-NNNNN.tfrecord``."""
    import apache_beam as beam

    return beam.io.Write(_TFRecordBatchSink(prefix, coder=None, file_name_suffix=".tfrecord",
                                            num_shards=num_shards))
