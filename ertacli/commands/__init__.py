"""One module per CLI verb: resolve inputs, call the library (calibration, evaluation), write the run directory."""
