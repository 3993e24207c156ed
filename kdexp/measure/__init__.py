"""What a trained student is judged on: accuracy, agreement and KL with its teacher, calibration, parameters,
FLOPs, latency and size (`metrics`)."""
