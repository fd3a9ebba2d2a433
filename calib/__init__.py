"""``loda.calib``: precision (FP16, INT8 Q/DQ graphs) and score calibration."""
