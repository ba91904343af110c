"""A stand-in for `boto3.session.Session` as `assume_role.deployment_principal` uses it: its
STS answers GetCallerIdentity with a given ARN (RGW 16 has none), its IAM answers GetRole as
told, or is a client of a real IAM API (RGW's)."""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import botocore.config
import botocore.session
from botocore.stub import Stubber


@dataclass
class CallerIdentity:
    """boto3.session.Session as deployment_principal uses it: its STS answering `arn`, its IAM
    answering GetRole with `role` (an ARN, or an error code; None: no GetRole expected, or an
    `unreachable` endpoint), or being `iam`, a client of a real IAM API."""

    arn: str
    role: str | None = None
    unreachable: bool = False
    iam: Any = None
    region_name: str | None = None
    asked: list[tuple[str, str]] = field(default_factory=list)  # service, region

    def __call__(self) -> "CallerIdentity":
        return self

    def client(self, service: str, region_name: str) -> Any:
        self.asked.append((service, region_name))
        if service == "iam" and self.iam is not None:
            return self.iam
        endpoint = "http://127.0.0.1:9" if self.unreachable and service == "iam" else None
        client = botocore.session.get_session().create_client(
            service,
            region_name=region_name,
            endpoint_url=endpoint,
            aws_access_key_id="k",
            aws_secret_access_key="s",
            config=botocore.config.Config(retries={"total_max_attempts": 1}),
        )
        if endpoint is not None:
            return client
        stubber = Stubber(client)
        if service == "sts":
            answer = {"UserId": "AIDAEXAMPLE", "Account": "111122223333", "Arn": self.arn}
            stubber.add_response("get_caller_identity", answer, {})
        elif self.role is not None and self.role.startswith("arn:"):
            name = self.arn.split("/")[1]  # the caller's role, asked for by name
            role = {
                "Path": "/",
                "RoleName": self.role.rsplit("/", 1)[1],
                "RoleId": "AROAEXAMPLE0000000000",
                "Arn": self.role,
                "CreateDate": datetime(2026, 1, 1, tzinfo=UTC),
                "AssumeRolePolicyDocument": "{}",
            }
            stubber.add_response("get_role", {"Role": role}, {"RoleName": name})
        elif self.role is not None:
            stubber.add_client_error("get_role", self.role, http_status_code=403)
        stubber.activate()
        return client
