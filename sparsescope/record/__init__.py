"""Record: hooks and streaming sparsity statistics over prompt suites."""

from sparsescope.record.metrics import Metric, default_metrics, parse_metrics, token_metrics
from sparsescope.record.recorder import RecordConfig, Recorder, Recording, concat_recordings, record

__all__ = ["Metric", "default_metrics", "parse_metrics", "token_metrics", "RecordConfig", "Recorder", "Recording",
           "concat_recordings", "record"]
