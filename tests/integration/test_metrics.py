"""The Prometheus endpoint of a real daemon, scraped while real jobs run, parsed with prometheus-client's
own text parser: counters move by exactly the jobs run (one of each termination reason, including an
OOM kill and, after a crash, a lost job), the gauges follow reality, and off loopback it speaks only TLS
with client certificates from the daemon's CA.
"""

from __future__ import annotations

import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon_harness import run_ca
from faultkit import sh, start, stop_job, wait_job, wait_until
from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

pytestmark = pytest.mark.root

R = pb.TerminationReason
REASONS = ("exited", "stopped", "oom-killed", "output-capped", "failed-to-start", "lost")
SERIES = ("jobworkerd_jobs_started_total", "jobworkerd_jobs_running", "jobworkerd_jobs_finished_total",
          "jobworkerd_start_latency_seconds_count", "jobworkerd_output_bytes_total", "jobworkerd_stream_clients",
          "process_cpu_seconds_total", "process_open_fds", "process_resident_memory_bytes")


def scrape(url: str, context: ssl.SSLContext | None = None) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    with urllib.request.urlopen(url.replace("0.0.0.0", "127.0.0.1"), timeout=10, context=context) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def finished(samples: dict) -> dict[str, float]:
    return {r: value(samples, "jobworkerd_jobs_finished_total", reason=r) for r in REASONS}


def started(samples: dict) -> float:
    return value(samples, "jobworkerd_jobs_started_total")


def latency_count(samples: dict) -> float:
    return value(samples, "jobworkerd_start_latency_seconds_count")


def _drain(stream) -> None:
    try:
        for _ in stream:
            pass
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.CANCELLED, exc


def test_counters_move_by_exactly_the_jobs_run_and_gauges_follow_reality(daemon_factory):
    d = daemon_factory({"limits": {"output_cap": "64K"}}).start()
    assert d.metrics_url.startswith("http://127.0.0.1:") and not d.metrics_url.endswith(":0/metrics")
    stub = d.stub()
    s = scrape(d.metrics_url)
    for name in SERIES:
        assert any(key[0] == name for key in s), f"{name} missing from the scrape"
    assert started(s) == 0 and latency_count(s) == 0
    assert finished(s) == dict.fromkeys(REASONS, 0)
    assert value(s, "jobworkerd_jobs_running") == 0 and value(s, "jobworkerd_stream_clients") == 0
    assert value(s, "jobworkerd_output_bytes_total") == 0
    assert value(s, "process_open_fds") > 0

    # two jobs that run until stopped, each having written 10 bytes
    sleepers = [sh(stub, "printf 0123456789; exec sleep 600").id for _ in range(2)]
    s = wait_until(lambda: (s := scrape(d.metrics_url))["jobworkerd_output_bytes_total", ()] == 20 and s,
                   "the running jobs' 20 bytes counted")
    assert started(s) == 2 and latency_count(s) == 2
    assert value(s, "jobworkerd_jobs_running") == 2
    assert sum(finished(s).values()) == 0
    assert value(s, "jobworkerd_start_latency_seconds_sum") > 0

    # open output streams are counted while they are open, and no longer once their clients leave
    follows = [stub.StreamOutput(pb.StreamOutputRequest(job_id=job_id)) for job_id in sleepers]
    readers = [threading.Thread(target=_drain, args=(f,), daemon=True) for f in follows]
    for reader in readers:
        reader.start()
    wait_until(lambda: scrape(d.metrics_url)["jobworkerd_stream_clients", ()] == 2, "two stream clients")
    follows[0].cancel()
    wait_until(lambda: scrape(d.metrics_url)["jobworkerd_stream_clients", ()] == 1, "one stream client left")
    read_once = stub.StreamOutput(pb.StreamOutputRequest(job_id=sleepers[1], no_follow=True))
    assert b"".join(c.data for c in read_once) == b"0123456789"  # a stream that ended: counted no more
    assert scrape(d.metrics_url)["jobworkerd_stream_clients", ()] == 1

    # one job of each other end: exited, OOM-killed (through jobctl), output-capped, failed to start
    exited = sh(stub, "echo done; exit 3").id
    assert wait_job(stub, exited).reason == R.TERMINATION_REASON_EXITED
    oom = d.jobctl("run", "--name", "hog", "--mem", "32M", "--", "python3", "-c", "b = b'x' * (200 << 20)")
    assert oom.returncode == 137, oom
    capped = start(stub, "head", "-c", "1M", "/dev/zero").id
    assert wait_job(stub, capped).reason == R.TERMINATION_REASON_OUTPUT_CAPPED
    with pytest.raises(grpc.RpcError) as refused:
        start(stub, "/etc/passwd")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for job_id in sleepers:
        assert stop_job(stub, job_id).reason == R.TERMINATION_REASON_STOPPED
    for follow, reader in zip(follows, readers):
        reader.join(30)
        assert not reader.is_alive()

    s = scrape(d.metrics_url)
    assert finished(s) == {"exited": 1, "stopped": 2, "oom-killed": 1, "output-capped": 1, "failed-to-start": 1,
                           "lost": 0}
    # started: the programs that ran (the sleepers, exited, the hog, capped); the failed start never ran
    assert started(s) == 5 and latency_count(s) == 5
    assert value(s, "jobworkerd_jobs_running") == 0
    assert value(s, "jobworkerd_stream_clients") == 0
    jobs = stub.ListJobs(pb.ListJobsRequest()).jobs
    assert len(jobs) == 6
    written = sum(j.usage.output_bytes for j in jobs)
    assert written == 20 + len(b"done\n") + (64 << 10) + next(j for j in jobs if j.name == "hog").usage.output_bytes
    assert value(s, "jobworkerd_output_bytes_total") == written
    bucket_le_10s = value(s, "jobworkerd_start_latency_seconds_bucket", le="10.0")
    assert bucket_le_10s == 5 == value(s, "jobworkerd_start_latency_seconds_bucket", le="+Inf")

    # a crash: the job running then is recorded as lost at the next start, and counted there
    doomed = sh(stub, "exec sleep 600").id
    d.kill()
    d.start()
    s = scrape(d.metrics_url)
    assert d.stub().GetJob(pb.GetJobRequest(job_id=doomed)).reason == R.TERMINATION_REASON_LOST
    assert finished(s) == {**dict.fromkeys(REASONS, 0), "lost": 1}
    assert started(s) == 0 and value(s, "jobworkerd_jobs_running") == 0


def test_user_labels_and_per_job_series_are_bounded_by_the_config(daemon_factory):
    d = daemon_factory({"metrics": {"user_labels": True, "max_users": 1, "per_job": True, "per_job_max": 1}}).start()
    alice, bob = d.stub("alice", "user"), d.stub("bob", "user")
    first = sh(alice, "exec sleep 600", limits=pb.Limits(memory_bytes=64 << 20)).id
    later = [sh(bob, "exec sleep 600").id, sh(d.stub(), "exec sleep 600").id]
    s = scrape(d.metrics_url)
    running = {dict(k[1])["user"]: v for k, v in s.items() if k[0] == "jobworkerd_jobs_running"}
    assert running == {"alice": 1, "other": 2}  # alice came first; bob and admin share the bucket
    per_job = {k: v for k, v in s.items()
               if k[0].startswith("jobworkerd_job_") and k[0] != "jobworkerd_job_series_omitted"}
    assert {dict(k[1])["job_id"] for k in per_job} == {first}
    assert value(s, "jobworkerd_job_memory_limit_bytes", job_id=first, owner="alice") == 64 << 20
    assert value(s, "jobworkerd_job_cpu_seconds_total", job_id=first, owner="alice") >= 0
    assert value(s, "jobworkerd_job_memory_peak_bytes", job_id=first, owner="alice") > 0
    assert value(s, "jobworkerd_job_series_omitted") == 2
    stop_job(alice, first, grace=0)
    s = scrape(d.metrics_url)
    running = {dict(k[1])["user"]: v for k, v in s.items() if k[0] == "jobworkerd_jobs_running"}
    assert running == {"alice": 0, "other": 2}  # alice keeps her series (at 0): at most max_users + 1 series
    assert {dict(k[1])["job_id"] for k in s if k[0] == "jobworkerd_job_cpu_seconds_total"} == {later[0]}
    for job_id, stub in zip(later, (bob, d.stub())):
        stop_job(stub, job_id, grace=0)


def test_defaults_have_no_user_or_per_job_series(daemon):
    s = scrape(daemon.metrics_url)
    assert ("jobworkerd_jobs_running", ()) in s
    assert not [k for k in s if k[0].startswith("jobworkerd_job_")]


def _client_context(d, cert: tuple[str, str] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=d.ca)
    if cert:
        context.load_cert_chain(*cert)
    return context


def test_off_loopback_the_endpoint_speaks_only_tls_with_client_certificates_from_the_ca(daemon_factory, tmp_path):
    # 0.0.0.0 is not loopback: served with TLS. The test connects to it over 127.0.0.1 only.
    d = daemon_factory({"metrics": {"listen": "0.0.0.0:0"}}).start()
    assert d.metrics_url.startswith("https://0.0.0.0:")
    url = d.metrics_url.replace("0.0.0.0", "127.0.0.1")

    s = scrape(url, _client_context(d, d.cert("alice", "user")))
    assert ("jobworkerd_jobs_started_total", ()) in s
    assert ("process_open_fds", ()) in s

    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP: no answer
        scrape(url.replace("https://", "http://"))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):  # TLS without a client certificate
        scrape(url, _client_context(d, None))
    other = tmp_path / "other-ca"
    run_ca("init", "--dir", str(other))
    run_ca("issue", "--dir", str(other), "--name", "mallory", "--role", "admin", "--out", str(tmp_path / "mallory"))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):  # a certificate from another CA
        scrape(url, _client_context(d, (str(tmp_path / "mallory.crt"), str(tmp_path / "mallory.key"))))
    weak = _client_context(d, d.cert("alice", "user"))
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("AES128-GCM-SHA256:AES128-SHA")  # TLS 1.2 without ECDHE
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        scrape(url, weak)
    # the daemon still serves after those failed handshakes
    assert ("jobworkerd_jobs_started_total", ()) in scrape(url, _client_context(d, d.cert("alice", "user")))


def test_a_metrics_address_that_is_not_an_ip_address_is_refused_at_start(daemon_factory):
    d = daemon_factory({"metrics": {"listen": "example.org:9464"}})
    with pytest.raises(RuntimeError) as info:
        d.start()
    text = str(info.value)
    assert "exited with 2" in text
    assert "metrics.listen" in text and "'example.org' is not an IP address" in text


def test_metrics_off_means_no_endpoint(daemon_factory):
    d = daemon_factory({"metrics": {"listen": ""}}).start()
    assert d.metrics_url == ""
    assert "metrics listening" not in Path(d.log).read_text()
