"""User-facing errors: one line that names the problem and the fix; the CLI prints it without a traceback."""

import math
import numbers


class UserError(ValueError):
    """A mistake in what the user asked for (bad model name, file, site, parameter)."""


def check_whole(value: object, name: str, low: int = 1, hint: str = "") -> int:
    """``value`` as an int if it is a whole number ≥ ``low`` (``3`` or ``3.0``, never ``True`` or ``"3"``)."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
          and int(value) == value and value >= low)
    if not ok:
        raise UserError(f"{name} must be a whole number ≥ {low}, got {value!r}" + (f"; {hint}" if hint else ""))
    return int(value)
