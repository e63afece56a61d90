"""The exception hierarchy. The CLI turns any ForgeError into one clear line and a non-zero exit.

Library code raises these for anything a user can cause (bad files, bad options, missing tools);
anything else is a bug and is allowed to surface as a traceback.
"""

from __future__ import annotations


class ForgeError(Exception):
    """Base class of every error a user can cause. `str(err)` is the one line the CLI prints."""


class ModelLoadError(ForgeError):
    """A model file is missing, truncated, not ONNX, or too large."""


class OutputPathError(ForgeError):
    """An output path would overwrite the input or cannot be written."""


class PipelineError(ForgeError):
    """A pipeline string or pass option is malformed."""


class PassError(ForgeError):
    """A pass failed, or the model after it failed verification."""


class PassCrash(PassError):
    """A pass raised an unexpected exception: a bug in onnxforge, not the user's fault (please report)."""


class VerificationError(PassError):
    """The checker or the numeric comparison rejected a pass's output."""


class InputSpecError(ForgeError):
    """A user-given input shape or input array does not fit the model's inputs."""


class FrontendError(ForgeError):
    """A model cannot be built or exported (unknown model, bad size, bad variant)."""


class CheckpointError(FrontendError):
    """A checkpoint cannot be read or does not match the model's state_dict."""


class BackendError(ForgeError):
    """A backend failed to compile or run a model."""


class BackendUnavailable(BackendError):
    """A backend's tool or package is not installed here."""


class DatasetError(ForgeError):
    """A dataset is missing files, misnamed, or inconsistent."""


class EvaluationError(ForgeError):
    """Evaluation cannot proceed (model/preset mismatch, missing predictions...)."""
