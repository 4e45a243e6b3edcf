"""Errors a user can cause. The CLI prints their message on one line and exits with code 2."""


class CgcError(Exception):
    """Base of every error caused by user input (bad path, model, option or artifact)."""


class ModelError(CgcError):
    """The model (built-in name, checkpoint folder or Python file) cannot be loaded."""


class InputError(CgcError):
    """A path, file or option value given by the user is missing or malformed."""


class UnsupportedOpError(CgcError):
    """The model uses an operation that cgc cannot import or a backend cannot lower."""


class IRError(CgcError):
    """Textual IR cannot be parsed, or a graph fails verification."""


def first_line(error: BaseException) -> str:
    """The first line of an error from a library (torch, ONNX Runtime, transformers), or its
    type when it says nothing: what a one-line message quotes."""
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__
