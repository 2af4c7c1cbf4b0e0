"""Tiled, seam-free prediction, as a few small stages.

::

    plan_prediction  ->  PredictionPlan (inputs and outputs checked, tiles, halo, workers: decided once)
    run_prediction   ->  run_blocks: TileSource.read --> DeviceRunner --> Sink.write, in a threaded
                         pipeline (`pipeline.run_pipeline`), yielding PredictEvent progress reports

Modules: `plan` (validation, memory budget, tiles), `network` (BatchNorm folding, channels-last, the
prepared-network cache), `source` (tiles read and normalized on the host or the device), `runner`
(forward passes with out-of-memory recovery), `pipeline` (reader -> compute -> writer threads, knowing
nothing of tiles), `sinks` (probabilities, semantic labels, instance labels, a tee), `run` (the glue)
and `api` (`iter_predict`, `predict`, `segment`).
"""
from .api import iter_predict, predict, segment
from .network import inference_network
from .pipeline import PREFETCH
from .plan import PredictionPlan, auto_tile_size, labels_dtype, plan_prediction
from .run import PredictEvent, run_blocks, run_prediction

__all__ = ["PredictEvent", "PredictionPlan", "plan_prediction", "run_prediction", "run_blocks", "iter_predict",
           "predict", "segment", "auto_tile_size", "labels_dtype", "inference_network", "PREFETCH"]
