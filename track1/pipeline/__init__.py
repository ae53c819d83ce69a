"""The pipeline: configs, checkpoints, the training loop, stand-alone ground truth, the rank check and
the command line."""
