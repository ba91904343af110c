"""integrations.yaml texts for the config tests: one integration around a valid export, and
the error a text is refused with."""

import pytest

from affise_s3_assets.config import ConfigError
from affise_s3_assets.config.apply import parse_integrations

VALID_EXPORT = """
      bucket: acme-affise-raw
      region: us-west-2
      directory: affise/clicks
      access_key: ${ACME_AWS_ACCESS_KEY_ID}
      secret_key: ${ACME_AWS_SECRET_ACCESS_KEY}
"""


def one_integration(extra: str = "", export: str = VALID_EXPORT, head: str = "") -> str:
    return f"""
integrations:
  - name: acme
    start: "2026-11-01 00:00:00"
{head}    clicks:
{export}{extra}
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_integrations(text)
    return str(caught.value)
