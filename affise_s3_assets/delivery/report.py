"""How a run's objects are reported: a tally of what was delivered, failed and tried
(`RunTally`, which the engine reports each window's objects to), one summary per failed
window for the step's Failure, an observation on each failed export's page (what failed and
what to do; `FailureRecord` alone knows its labels, and the sensors that read it back go
through it), and the windows a stopped destination was not tried for. What an S3 failure
means is s3.py's (`delivery_failure`); nothing here is a secret.
"""

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from affise_s3_assets.config.targets import ExportTarget
from affise_s3_assets.delivery.engine import Outcome, Window
from affise_s3_assets.delivery.record import window_metadata


class RunTally:
    """What a run's objects came to, as the engine reports them window by window: how many
    were delivered, which failed, which (export, window) pairs were tried, and the failure
    that stopped each destination (its later windows were not tried). `delivered` and
    `failed` record each object on the instance as it is reported."""

    def __init__(
        self,
        delivered: Callable[[Window, Outcome, datetime], None],
        failed: Callable[[Window, Outcome], None],
    ) -> None:
        self._delivered, self._failed = delivered, failed
        self.delivered = 0
        self.failures: list[Outcome] = []
        self.tried: set[tuple[dg.AssetKey, str]] = set()
        self.stopped_by: dict[dg.AssetKey, tuple[Window, Outcome]] = {}

    def __call__(self, window: Window, objects: list[Outcome]) -> None:
        """The engine's report of `window`'s objects; each delivered one is recorded with the
        time of this report (its `delivered_after_close_s`)."""
        reported_at = datetime.now(UTC).replace(tzinfo=None)
        for item in objects:
            key = item.target.asset_key
            self.tried.add((key, window.key))
            if item.stops_destination:
                self.stopped_by.setdefault(key, (window, item))
            if item.failure is None:
                self.delivered += 1
                self._delivered(window, item, reported_at)
            else:
                self.failures.append(item)
                self._failed(window, item)

    def untried(
        self, windows: Sequence[Window], targets: Sequence[ExportTarget]
    ) -> Iterator[tuple[Window, Outcome]]:
        """Each window of `targets` due in `windows` that this run never tried, and why."""
        for window in windows:
            for target in targets:
                if target.covers(window.start) and (target.asset_key, window.key) not in self.tried:
                    yield window, not_attempted(target, self.stopped_by)


def failure_summary(
    failures: list[Outcome],
    delivered: int,
    windows: list[Window],
) -> str:
    by_target: dict[str, list[Outcome]] = {}
    for item in failures:
        by_target.setdefault(item.target.integration, []).append(item)
    lines = [
        f"{len(failures)} objects failed, {delivered} delivered, over {len(windows)} windows "
        f"({windows[0].key} to {windows[-1].key}). Failed and undelivered windows show as "
        "Failed on each asset; the catch-up sensor delivers them again once the destination "
        "works and the source is complete."
    ]
    for name, items in sorted(by_target.items()):
        first = items[0]
        stopped = " (its later windows in this run were not attempted)"
        lines.append(f"- {first.failure}{stopped if items[-1].stops_destination else ''}")
        if len(items) > 1:
            lines.append(f"  and {len(items) - 1} more windows of {name!r}")
    return "\n".join(lines)


# An authorization failure's message names the action refused ("... is not authorized to
# perform: kms:GenerateDataKey on resource ...", AWS's IAM, STS and KMS wording).
_NAMED_ACTION_RE = re.compile(r"not authorized to perform:?\s*([a-z0-9-]+:[A-Za-z0-9*]+)")


def named_action(failure: str) -> str | None:
    """The action a refusal's message names (`s3:PutObject`, `kms:GenerateDataKey`), if any."""
    found = _NAMED_ACTION_RE.search(failure)
    return found.group(1) if found else None


@dataclass(frozen=True)
class FailureRecord:
    """A window not delivered, as its observation records it: what failed (the words shown),
    the store's error code, whether a retry can fix it, the action a refusal named, the run."""

    failure: str
    error_code: str | None
    permanent: bool
    missing_permission: str | None = None
    run_id: str | None = None

    @classmethod
    def of(cls, item: Outcome, run_id: str) -> "FailureRecord":
        failure = item.failure or ""
        return cls(failure, item.code, item.permanent, named_action(failure), run_id)

    def to_metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "delivery_failed": self.failure,
            "error_code": self.error_code,
            "permanent": self.permanent,
        }
        if self.missing_permission is not None:
            metadata["missing_permission"] = self.missing_permission
        metadata["run_id"] = self.run_id
        return metadata

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "FailureRecord | None":
        """An observation's failure (metadata values as Dagster returns them, or plain); None
        for an observation that records none. Observations recorded without the refused
        action have it read from their words."""
        values = {name: getattr(value, "value", value) for name, value in metadata.items()}
        if "delivery_failed" not in values:
            return None
        failure = str(values["delivery_failed"] or "")
        code = values.get("error_code")
        run_id = values.get("run_id")
        return cls(
            failure=failure,
            error_code=str(code) if code is not None else None,
            permanent=values.get("permanent") is True,
            missing_permission=values.get("missing_permission") or named_action(failure),
            run_id=str(run_id) if run_id is not None else None,
        )


def failure_observation(
    context: dg.AssetExecutionContext, window: Window, item: Outcome
) -> dg.AssetObservation:
    """A window not delivered, on its asset's page next to the window: the partition shows
    as Failed once the step fails, and this says why."""
    record = FailureRecord.of(item, context.run.run_id)
    return dg.AssetObservation(
        asset_key=item.target.asset_key,
        partition=window.key,
        metadata={**window_metadata(window.start, window.end), **record.to_metadata()},
    )


def not_attempted(
    target: ExportTarget, stopped_by: Mapping[dg.AssetKey, tuple[Window, Outcome]]
) -> Outcome:
    """A window this run did not try: why, in the words of the failure that stopped it."""
    stopper = stopped_by.get(target.asset_key)
    if stopper is None:
        return Outcome(target, "not attempted in this run (see the run's failure)", "NotAttempted")
    window, item = stopper
    return Outcome(
        target,
        f"not attempted in this run, stopped by window {window.key}'s failure: {item.failure}",
        item.code or "NotAttempted",
        item.permanent,
    )
