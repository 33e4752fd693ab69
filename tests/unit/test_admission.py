"""The admission arithmetic every cluster job goes through (cluster/admission.py)."""

from __future__ import annotations

import pytest

from cluster.admission import (
    DEFAULT_QUEUE_TIMEOUT_S,
    RESOURCE,
    Capacity,
    Footprint,
    Ticket,
    check_deadline,
    check_fits,
    check_options,
    entrypoint_resources,
    node_resources,
    worker_reservation,
)
from cluster.errors import Img2ImgError


def test_a_job_reserves_its_workers_its_data_cpu_and_its_driver():
    fp = Footprint(workers=2, cpus_per_worker=1.0)
    assert fp.cpus == 3.5 and fp.resources() == {RESOURCE: 3.5}
    assert Footprint(2, 0.5).resources() == {RESOURCE: 2.5}
    assert "2 x 1 CPUs" in fp.describe() and "1 for reading the data" in fp.describe()
    assert node_resources(4) == {RESOURCE: 4.0}


def test_gpus_are_reserved_only_where_the_cluster_advertises_them():
    fp = Footprint(2, 1.0, gpus_per_worker=1.0)
    assert entrypoint_resources(fp, Capacity(((0.0, 8.0),), gpus=2.0)) == {RESOURCE: 3.5, "img2img_gpu": 2.0}
    assert entrypoint_resources(fp, Capacity(((0.0, 8.0),))) == {RESOURCE: 3.5}
    assert entrypoint_resources(fp, None) == {}  # a cluster without admission resources: no queue


@pytest.mark.parametrize("fp, resources, serve, largest, message", [
    (Footprint(5, 1.0), {"CPU": 4.0}, 0.0, None, "= 5 CPUs, but the cluster at http://ray has 4"),
    (Footprint(3, 1.0), {"CPU": 4.0}, 0.0, None, "would leave 1 for reading the data (1) and the job's driver (0.5)"),
    (Footprint(2, 1.0), {"CPU": 4.0}, 1.0, None, "Serve replicas hold 1 of its CPUs"),
    (Footprint(2, 1.0), {"CPU": 8.0}, 0.0, 3.0, "the largest node of the cluster at http://ray has 3"),
    (Footprint(2, 1.0, 1.0), {"CPU": 8.0, "GPU": 1.0}, 0.0, None, "--gpu asks for 2 GPU worker(s)"),
])
def test_a_job_that_can_never_start_is_refused_with_the_numbers(fp, resources, serve, largest, message):
    with pytest.raises(Img2ImgError) as e:
        check_fits(fp, resources, "http://ray", serve, largest)
    assert message in str(e.value)


def test_a_job_that_fits_is_not_refused():
    check_fits(Footprint(2, 1.0), {"CPU": 4.0}, "http://ray", 0.5, 4.0)
    check_fits(Footprint(9, 1.0), {}, "http://ray")  # cluster not known: Ray decides


@pytest.mark.parametrize("priority, timeout, message", [
    ("urgent", None, "--priority must be one of high, normal, low"),
    ("high", 0, "--queue-timeout must be between"),
    ("low", -5, "--queue-timeout must be between"),
    ("normal", 8 * 86400, "--queue-timeout must be between"),
])
def test_bad_queue_options_are_refused(priority, timeout, message):
    with pytest.raises(Img2ImgError, match=message):
        check_options(priority, timeout)


def test_queue_options_default_to_a_day():
    assert check_options("normal", None) == DEFAULT_QUEUE_TIMEOUT_S == 86400
    assert check_options("high", 60) == 60


def test_a_job_admitted_after_its_queue_timeout_ends_with_the_reason():
    check_deadline(None)
    check_deadline(1000.0, now=999.0)
    with pytest.raises(Img2ImgError, match=r"^queue timeout: the job waited in the queue past its --queue-timeout "
                                           r"\(1m40s late\) and was not started"):
        check_deadline(1000.0, now=1100.0)


def test_the_admission_record_round_trips_through_ray_metadata_and_orders_by_priority_then_time():
    t = Ticket(Footprint(2, 0.5), "high", 60.0, 123.0, "raysubmit_x", {RESOURCE: 2.5})
    back = Ticket.from_metadata({"img2img_admission": t.to_json()})
    assert back == t
    assert Ticket.from_metadata({}) is None and Ticket.from_metadata({"img2img_admission": "{bad"}) is None
    normal_first = Ticket(Footprint(1, 1.0), "normal", submitted=1.0)
    assert sorted([normal_first, t], key=lambda x: x.rank)[0] is t


@pytest.mark.parametrize("priority, preempt, refused", [
    ("low", True, True), ("high", True, False), ("normal", True, False), ("low", False, False)])
def test_preempt_needs_a_priority_with_something_below_it(priority, preempt, refused):
    from cluster.preemption import check_preempt

    if refused:
        with pytest.raises(Img2ImgError, match="--preempt stops running jobs of a LOWER priority"):
            check_preempt(priority, preempt)
    else:
        check_preempt(priority, preempt)


def test_a_job_bigger_than_the_largest_node_splits_its_reservation_over_nodes():
    """4 x 2 CPUs + 1.5 = 9.5 > the 8-CPU head: the entrypoint keeps the data and driver share, each
    worker reserves its 2 CPUs in its placement group; a job that fits one node is not split."""
    cap = Capacity(((0.0, 8.0), (0.0, 2.0)))
    big, small = Footprint(4, 2.0), Footprint(2, 2.0)
    per_worker = worker_reservation(big, cap)
    assert per_worker == {RESOURCE: 2.0}
    assert entrypoint_resources(big, cap, split=True) == {RESOURCE: 1.5}
    assert worker_reservation(small, cap) == {} and worker_reservation(big, None) == {}
    gpu = Footprint(3, 3.0, gpus_per_worker=1.0)
    assert worker_reservation(gpu, Capacity(((0.0, 8.0), (0.0, 4.0)), gpus=3.0)) == {RESOURCE: 3.0, "img2img_gpu": 1.0}
    assert worker_reservation(gpu, Capacity(((0.0, 8.0), (0.0, 4.0)))) == {RESOURCE: 3.0}
    # across nodes, only the whole cluster and each worker's node bound it
    check_fits(big, {"CPU": 10.0}, "http://ray", 0.0, 8.0, across_nodes=True)
    with pytest.raises(Img2ImgError, match="has 10 CPUs; --workers 5 x --cpus-per-worker 2 = 10 would leave 0"):
        check_fits(Footprint(5, 2.0), {"CPU": 10.0}, "http://ray", 0.0, 8.0, across_nodes=True)
    with pytest.raises(Img2ImgError, match="a worker runs on one node, but the largest node .* has 8 CPUs"):
        check_fits(Footprint(2, 9.0), {"CPU": 20.0}, "http://ray", 0.0, 8.0, across_nodes=True)
    with pytest.raises(Img2ImgError, match="reserved on one node, but the largest node"):  # not a training job
        check_fits(big, {"CPU": 10.0}, "http://ray", 0.0, 8.0)


def test_a_split_reservation_round_trips_and_counts_the_whole_cluster_for_preemption():
    from types import SimpleNamespace

    from cluster.preemption import PREEMPTIBLE, victims

    t = Ticket(Footprint(4, 2.0), "high", 60.0, 1.0, "raysubmit_x", {RESOURCE: 1.5}, {RESOURCE: 2.0})
    back = Ticket.from_metadata({"img2img_admission": t.to_json()})
    assert back == t and back.split and not Ticket(Footprint(1, 1.0)).split
    low = Ticket(Footprint(2, 1.0), "low", submitted=0.0)
    job = SimpleNamespace(status="JobStatus.RUNNING", submission_id="raysubmit_low", start_time=1,
                          metadata={PREEMPTIBLE: "true", "img2img_admission": low.to_json()})
    client = SimpleNamespace(list_jobs=lambda: [job])
    # 6 free on the head and 2 on the node: 8 of 9.5 in the whole cluster; stopping the 3.5 job makes room
    cap = Capacity(((2.0, 8.0), (0.0, 2.0)))
    assert [j.submission_id for j, _ in victims(client, t, cap)] == ["raysubmit_low"]
    assert victims(client, t, Capacity(((0.0, 8.0), (0.0, 2.0)))) == []  # 10 free: it fits already


FULL, ROOM = Capacity(((4.0, 4.0),)), Capacity(((0.0, 4.0),))


@pytest.mark.parametrize("ended_s_ago, statuses, reads, want, reads_done", [
    # a job ended 1 s ago and the report still counts it: the next read shows the room -> nobody stops
    (1.0, ["PENDING"] * 3, [FULL, ROOM], None, 2),
    # Ray admits the job while the report still lags -> nobody stops
    (1.0, ["PENDING", "PENDING", "RUNNING"], [FULL, FULL, FULL], None, 2),
    # no job has ended for longer than the report's lag: the read at submission is the truth
    (60.0, ["PENDING"], [], FULL, 0),
    # still full once the lag has passed: the victims are chosen by the last read
    (0.5, ["PENDING"] * 10, [FULL] * 10, FULL, None),
], ids=["report-catches-up", "ray-admits-it", "nothing-ended-lately", "really-full"])
def test_preemption_waits_out_the_reports_lag_only_after_a_job_has_just_ended(ended_s_ago, statuses, reads, want,
                                                                              reads_done):
    """A --preempt job submitted seconds after another ended must not stop a running job for
    CPUs that the dashboard's report still counts for the ended one."""
    import time
    from types import SimpleNamespace

    from cluster.preemption import settled

    ended = SimpleNamespace(status="JobStatus.SUCCEEDED", end_time=int((time.time() - ended_s_ago) * 1000))
    statuses, pending_reads = iter(statuses), list(reads)
    client = SimpleNamespace(list_jobs=lambda: [ended, SimpleNamespace(status="JobStatus.RUNNING", end_time=None)],
                             get_job_info=lambda _: SimpleNamespace(status=f"JobStatus.{next(statuses)}"))
    t = Ticket(Footprint(2, 1.0), "high", submitted=0.0)
    got = settled(client, "raysubmit_new", t, FULL, lambda: pending_reads.pop(0), lag_s=1.5)
    assert got == want
    if reads_done is not None:
        assert len(reads) - len(pending_reads) == reads_done


def test_the_queue_counts_the_whole_cluster_for_a_split_job_and_the_largest_node_for_others():
    from types import SimpleNamespace

    from cluster.queue_view import queue_view

    def pending(job_id, ticket):
        return SimpleNamespace(status="JobStatus.PENDING", submission_id=job_id, start_time=None,
                               metadata={"img2img_admission": ticket.to_json()})

    split = Ticket(Footprint(4, 2.0), submitted=1.0, worker_resources={RESOURCE: 2.0})
    whole = Ticket(Footprint(2, 1.0), submitted=2.0)
    client = SimpleNamespace(list_jobs=lambda: [pending("raysubmit_a", split), pending("raysubmit_b", whole)])
    entries = queue_view(client, Capacity(((5.0, 8.0), (0.0, 2.0))), now=10.0)
    assert [(e.job_id, e.needs, e.free) for e in entries] == [("raysubmit_a", 9.5, 5.0), ("raysubmit_b", 3.5, 3.0)]


def test_a_jobs_workers_wait_for_room_up_to_its_queue_timeout_in_all():
    from jobs.training.client import WORKER_START_TIMEOUT_S, placement_timeout
    from jobs.training.driver import START_RETRIES

    assert placement_timeout(86400) * (START_RETRIES + 1) == 86400  # three tries of 8 h for the default day
    assert placement_timeout(60) == WORKER_START_TIMEOUT_S  # never less than a single-node job's
