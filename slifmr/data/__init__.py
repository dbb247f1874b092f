"""Data layer: the on-disk format, importers, splits, features and training-edge graphs."""

from slifmr.data.format import TEST, TRAIN, VALID, Dataset, read_dataset, write_dataset

__all__ = ["Dataset", "read_dataset", "write_dataset", "TRAIN", "VALID", "TEST"]
