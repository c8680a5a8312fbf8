"""Where training metrics go: a console progress line, WORKDIR/metrics.jsonl for scripts, and TensorBoard
event files under WORKDIR/tensorboard. Only process 0 writes, so N hosts produce one record per step."""
from __future__ import annotations

import json
import logging

import jax
from etils import epath


class MetricsWriter:
    def __init__(self, workdir, *, tensorboard: bool = True, quiet: bool = False):
        self.active = jax.process_index() == 0
        self.quiet = quiet
        self.path = epath.Path(workdir) / "metrics.jsonl"
        self._tb = None
        if self.active and tensorboard:
            self._tb = _tensorboard_writer(epath.Path(workdir) / "tensorboard")

    def print(self, text: str) -> None:
        if self.active and not self.quiet:
            print(text, flush=True)

    def resume_at(self, step: int) -> dict:
        """Drops records past the restored `step` (and any "final" record) so a resumed run logs each step
        once; returns the last step record kept (what the summary reports if no step runs). The file is
        rewritten under a temporary name and renamed, so a crash here loses nothing. TensorBoard event files
        are append-only and left as they are (see the README)."""
        if not self.active or not self.path.exists():
            return {}
        kept, last = [], {}
        lines = self.path.read_text().splitlines()
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash mid-write
            if isinstance(record, dict) and not record.get("final") and record.get("step", step + 1) <= step:
                kept.append(line)
                last = record
        if len(kept) < len(lines):
            tmp = self.path.parent / f"{self.path.name}.tmp"
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.path)
        return last

    def write(self, record: dict) -> None:
        """Appends the record as one JSON line and logs its numeric fields as TensorBoard scalars."""
        if not self.active:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None and "step" in record:
            self._tb.scalars(int(record["step"]), {k: v for k, v in record.items()
                                                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)})

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class _TFSummaryWriter:
    """TensorBoard scalars through tf.summary (TensorFlow is already installed as a seqio dependency)."""

    def __init__(self, logdir):
        import tensorflow as tf  # imported only when TensorBoard output is on, on process 0

        from tensorflow.core.framework import summary_pb2

        tf.config.set_visible_devices([], "GPU")  # never let TF grab accelerator memory from JAX
        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(logdir))
        # The raw summary op plus the "scalars" plugin tag: TensorBoard shows these as scalar charts, and
        # writing them needs no `tensorboard` package.
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")).SerializeToString()

    def scalars(self, step: int, values: dict) -> None:
        with self._writer.as_default():
            for name, value in values.items():
                self._tf.summary.write(name, self._tf.constant(float(value), self._tf.float32), step=step,
                                       metadata=self._metadata)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _tensorboard_writer(logdir):
    try:
        return _TFSummaryWriter(logdir)
    except ImportError:
        logging.warning("TensorFlow is not importable; TensorBoard event files are off (metrics.jsonl is still written)")
        return None
