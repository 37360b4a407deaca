"""The errors a user can fix: printed as one line by the CLI, exit status 2."""


class PipelineError(Exception):
    """An error in the user's input (a recipe, a data file, a model folder, a command line)."""


class RecipeError(PipelineError):
    """A recipe key that is unknown, of the wrong type or out of range."""
