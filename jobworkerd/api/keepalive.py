"""The server's keepalive policy: HTTP/2 PINGs both ways (grpc's doc/keepalive.md, gRFC A8).

Constants, not config: they must fit the clients' libraries, not the site. A WaitJob, or a StreamOutput of
a quiet job, sends nothing for minutes, so keepalive is what tells a live client from a vanished one.

- **Clients' pings** are accepted down to one every 5 s, on connections with or without calls. grpc-go and
  grpc-java never ping more often than every 10 s (their floor for the keepalive time), so jitter never
  makes such a client a striker. A ping sooner than 5 s after the previous one, with no data or headers
  from us in between, is a strike; the third strike is a GOAWAY ENHANCE_YOUR_CALM "too_many_pings", as
  grpc documents (its default of 2 strikes is kept: a ping flood costs us a write per ping), and the client
  doubles its interval (gRFC A8). The calls on that connection fail (grpc-js: RESOURCE_EXHAUSTED).
  Without this policy grpc's defaults apply: 5 minutes between pings when we send nothing, so a client
  pinging every 10 s was sent away ~50 s into a WaitJob.
- **Our pings**: a connection that has sent us nothing for 30 s is pinged, calls or none, and closed when
  no ack comes within 20 s. A peer that vanished (host gone, cable pulled, process stopped: its kernel may
  still acknowledge TCP) is reaped at most ~50 s after the last thing it sent, with its streams, waits and
  file descriptors. Any ping of ours left unanswered for 20 s ends the connection too (grpc's own pings,
  e.g. its bandwidth probes, are answered like keepalive's; grpc's default wait is 60 s, and one unanswered
  probe holds back the keepalive ping). Pinging does not stop while we send no data
  (max_pings_without_data 0). An idle connection costs one 17-byte frame each way per 30 s.
"""

KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 20_000
MIN_CLIENT_PING_INTERVAL_MS = 5_000
MAX_PING_STRIKES = 2

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),  # GRPC_ARG_PING_TIMEOUT_MS: every ping, not only keepalive's
    # Both directions: we ping connections without calls too, and clients' pings on such a connection are
    # judged by the 5 s rule below, not by the 2 hours grpc otherwise allows between them.
    ("grpc.keepalive_permit_without_calls", 1),
    # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS: the string differs from the macro's name (an
    # unknown key is silently ignored, and grpc's 5 minutes would apply).
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
    ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
    ("grpc.http2.max_pings_without_data", 0),
)
