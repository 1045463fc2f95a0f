"""Datasets: the on-disk format, validation, the device-resident sampler and data collection."""

from macflow.data.dataset import Dataset
from macflow.data.io import load, read_meta, save
from macflow.data.sampler import Batch, Sampler
from macflow.data.schema import SCHEMA_VERSION, DatasetError, fields_for

__all__ = [
    "SCHEMA_VERSION",
    "Batch",
    "Dataset",
    "DatasetError",
    "Sampler",
    "fields_for",
    "load",
    "read_meta",
    "save",
]
