"""User-facing errors: one line that names the problem and the fix; the CLI prints it without a traceback."""


class UserError(ValueError):
    """A mistake in what the user asked for (bad model name, file, site, parameter)."""
