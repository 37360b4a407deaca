"""The errors a user can fix: printed as one line by the CLI, exit status 2."""

import errno


class PipelineError(Exception):
    """An error in the user's input (a recipe, a data file, a model folder, a command line)."""


class RecipeError(PipelineError):
    """A recipe key that is unknown, of the wrong type or out of range."""


def is_disk_full(error: BaseException) -> bool:
    """Whether a save failed for want of space: an OSError, or safetensors' and torch's own errors, that say so."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(words in str(error) for words in ("No space left on device", "StorageFull", "Disk quota exceeded"))
