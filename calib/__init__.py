"""``loda.calib``: precision (FP16, INT8 Q/DQ graphs) and score calibration.

The graphs: :mod:`loda.calib.fp16`, :mod:`loda.calib.int8` (``loda-calib``). The score
calibration (the 4-parameter logistic that maps scores to a dataset's MOS scale, fitted by
``loda-eval`` and stored in the checkpoint) is implemented once in :mod:`loda.metrics` and
:mod:`loda.metadata`, where the torch-free runtime reads it; it is re-exported here.
"""

from loda.metadata import Calibration
from loda.metrics import LogisticFit, fit_logistic, logistic4

__all__ = ["Calibration", "LogisticFit", "fit_logistic", "logistic4"]
