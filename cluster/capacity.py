"""The cluster's admission capacity as the Ray dashboard reports it: the admission resource
(`img2img_cpu`, and `img2img_gpu`) each live node advertises, and how much of it is reserved
(`cluster.admission` reserves it; `cluster.queue_view` and the clients read it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx
import tenacity

from cluster.errors import Img2ImgError

RESOURCE, GPU_RESOURCE = "img2img_cpu", "img2img_gpu"


def _camel(name: str) -> str:
    head, *rest = name.split("_")  # the dashboard's JSON camel-cases resource names
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


@dataclass(frozen=True)
class Capacity:
    """Admission CPUs (and GPUs) of the cluster's live nodes: `per_node` [(reserved, total)]."""

    per_node: tuple[tuple[float, float], ...]
    gpus: float = 0.0

    @property
    def total(self) -> float:
        return sum(t for _, t in self.per_node)

    @property
    def free(self) -> float:
        return sum(max(t - u, 0.0) for u, t in self.per_node)

    @property
    def largest(self) -> float:
        return max((t for _, t in self.per_node), default=0.0)

    @property
    def largest_free(self) -> float:
        return max((t - u for u, t in self.per_node), default=0.0)


REPORT_WAIT_S = 30.0  # a head that has just started reports its nodes' resources after a few seconds


class _NoReport(Exception):  # the dashboard did not answer, or its report lists no node yet
    pass


def _load_report(ray_address: str, headers: dict) -> dict:
    url = ray_address.rstrip("/") + "/api/cluster_status"
    try:
        report = httpx.get(url, params={"format": "0"}, headers=headers, timeout=10).json()[
            "data"]["clusterStatus"]["loadMetricsReport"]
    except Exception as e:
        raise _NoReport(f"{type(e).__name__}: {e}") from None
    if not report.get("usageByNode"):
        raise _NoReport("no node reported yet")
    return report


def capacity(ray_address: str, headers: dict, wait_s: float = REPORT_WAIT_S) -> Capacity | None:
    """The cluster's admission resources from the dashboard; None when its nodes advertise none
    (started without them: no queue). Read again for up to `wait_s` s while the dashboard does not
    answer or lists no node yet (a fresh head): a job submitted unreserved would start beside
    others and starve them. Raises Img2ImgError when it still cannot be read."""
    try:
        report = tenacity.Retrying(retry=tenacity.retry_if_exception_type(_NoReport),
                                   stop=tenacity.stop_after_delay(wait_s), wait=tenacity.wait_fixed(1),
                                   reraise=True)(_load_report, ray_address, headers)
    except _NoReport as e:
        raise Img2ImgError(f"the Ray dashboard at {ray_address} did not report the cluster's resources within "
                           f"{wait_s:.0f} s ({e}), so the job cannot be queued safely; try again") from None
    nodes = []
    for usage in report["usageByNode"].values():
        used, total = usage.get(_camel(RESOURCE)) or usage.get(RESOURCE) or (0.0, 0.0)
        nodes.append((float(used), float(total)))
    if not any(t for _, t in nodes):
        return None
    gpu = (report.get("usage") or {}).get(_camel(GPU_RESOURCE)) or (0.0, 0.0)  # (used, total)
    return Capacity(tuple(nodes), float(gpu[1]))


# The report trails the cluster: it still counts a job's reservation 1.5-4.5 s after the job has
# ended (measured on the 2-core machine), so a "not enough" is read again for this long.
REPORT_LAG_S = 10.0
REPORT_READ_S = 2.0  # each of those reads waits at most this long for a dashboard that does not answer


REREAD_EVERY_S = 0.5


def reread_while_short(read: Callable[[], Capacity | None], short: Callable[[Capacity], bool],
                       wait_s: float) -> Capacity | None:
    """`read()` again every REREAD_EVERY_S s while its result is `short` (and not None), for at
    most `wait_s` s: the one wait on the report's lag that `confirmed` (deploys) and
    `cluster.preemption.settled` (preemption) share. -> the last read. Raises what `read` raises."""
    return tenacity.Retrying(retry=tenacity.retry_if_result(lambda c: c is not None and short(c)),
                             stop=tenacity.stop_after_delay(wait_s), wait=tenacity.wait_fixed(REREAD_EVERY_S),
                             retry_error_callback=lambda state: state.outcome.result())(read)


def confirmed(ray_address: str, headers: dict, enough: Callable[[Capacity], bool], first: Capacity,
              wait_s: float = REPORT_LAG_S) -> Capacity | None:
    """`first` when it is `enough`; else the report read again every 0.5 s until a read is
    `enough` or `wait_s` seconds have passed, so nobody acts on CPUs that a job which has just
    ended still holds in the report. -> the last read (None: the cluster advertises no admission
    resources any more). Raises Img2ImgError as `capacity` does."""
    if enough(first):
        return first
    return reread_while_short(lambda: capacity(ray_address, headers, REPORT_READ_S), lambda c: not enough(c), wait_s)
