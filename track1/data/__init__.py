"""Data for training and scoring, over every kind of data (`data.name`): Fashion-MNIST and CIFAR held in
memory as uint8 (fmnist, cifar), ImageNet-style folders and list files decoded by workers (images);
which data a config names and `prepare` (sources), training batches (training), evaluation sets
(evaluation)."""
from track1.data.datafiles import DataError
from track1.data.evaluation import (EvalImages, EvalSet, calibration_batches, validation_batches,
                                    validation_set)
from track1.data.sources import prepare
from track1.data.training import BatchStream, EpochBatchSampler, TrainData, epoch_permutation


__all__ = ["DataError", "TrainData", "EvalSet", "EvalImages", "validation_set", "validation_batches",
           "calibration_batches", "prepare", "epoch_permutation", "EpochBatchSampler", "BatchStream"]
