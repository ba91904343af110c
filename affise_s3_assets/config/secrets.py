"""Secrets as `${VAR}` references: the variables an integration's keys are read from, and the
value of a reference, resolved only when a delivery needs it. No secret value is kept, logged
or put in an error.
"""

import os
import re

from affise_s3_assets.config import ConfigError

ENV_REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def credential_variables(name: str) -> tuple[str, str]:
    """The variables an integration's access key id and secret are read from:
    acme -> ACME_AWS_ACCESS_KEY_ID, ACME_AWS_SECRET_ACCESS_KEY."""
    return f"{name.upper()}_AWS_ACCESS_KEY_ID", f"{name.upper()}_AWS_SECRET_ACCESS_KEY"


def env_reference_name(reference: str) -> str | None:
    """The variable named by a `${VAR}` reference, or None for a literal."""
    match = ENV_REF_RE.fullmatch(reference)
    return match.group(1) if match else None


def fit_for_a_header(value: str) -> bool:
    """A credential goes into the signed Authorization header: one pasted with its newline
    is refused by http.client, whose error quotes the header (key id and signature)."""
    return not any(char.isspace() or not char.isprintable() for char in value)


def resolve_reference(reference: str, what: str) -> str:
    """Resolve `${VAR}` from the environment at delivery time; literals pass through.

    The error names the variable and `what` it is for, never a value.
    """
    variable = env_reference_name(reference)
    if variable is None:
        return reference
    value = os.environ.get(variable)
    if not value:
        raise ConfigError(f"{what}: environment variable {variable} is not set")
    if not fit_for_a_header(value):
        raise ConfigError(
            f"{what}: environment variable {variable} holds whitespace or control characters "
            "(a trailing newline?); credentials are refused until it is fixed"
        )
    return value
