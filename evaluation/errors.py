"""The evaluator's one exception type (the package imports nothing from the rest of the repository)."""


class EvalInputError(ValueError):
    """A problem with the evaluator's inputs that the user can fix: a missing or malformed file, a wrong shape or
    dtype, too few images. Scripts turn it into a one-line error (evaluate.py: `UserError`, exit status 2)."""
