"""track1: a PaddlePaddle pipeline for the CVPR 2022 NAS challenge, Track 1 (supernet ranking)."""
