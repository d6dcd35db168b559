"""Errors the library raises for problems a user can fix (kept free of torch so that the
workflow can catch them cheaply). Each message says what is wrong and what to do."""


class SemisupError(RuntimeError):
    """Base of the library's user-facing errors."""


class DatasetError(SemisupError):
    """A dataset could not be downloaded or read; the message says which files and what to do."""


class SplitError(SemisupError, ValueError):
    """A split cannot be made (bad n_labels) or a split file does not match its hash."""


class CheckpointError(SemisupError):
    """A checkpoint exists but cannot be used; never silently start afresh."""


class PretrainedWeightsError(SemisupError):
    """Pretrained weights could not be fetched, failed their checksum or do not fit the network;
    the message names the file, its URL and where to put it."""


class PretrainedError(SemisupError):
    """A pretrained network or its tokenizer could not be loaded; the message says where to put
    its files."""
