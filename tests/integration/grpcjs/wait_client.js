// A grpc-js client for tests/integration/test_keepalive.py. Over mutual TLS, with the keepalive the test
// asks for (grpc.keepalive_time_ms, grpc.keepalive_permit_without_calls = 1), it starts a job and waits
// for it with WaitJob. With "idle_channel", a second connection is opened at the same time and makes no
// call at all until the wait is over; then it asks for the job (GetJob) on that connection.
//
//   node wait_client.js '{"addr": "127.0.0.1:PORT", "ca": "...", "cert": "...", "key": "...",
//                         "proto": ".../jobworker.proto", "include_dirs": [".../proto"],
//                         "keepalive_time_ms": 10000, "argv": ["sleep", "60"], "idle_channel": true}'
//
// One JSON line per step on stdout: {"step": "started", "id": ...}, {"step": "finished", "job": {...}},
// {"step": "idle_channel", "job": {...}}, or {"step": "error", "call": ..., "code": ..., "details": ...}.
// grpc-js's own logs (GRPC_TRACE=keepalive,transport GRPC_VERBOSITY=DEBUG) go to stderr.
'use strict';

const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const cfg = JSON.parse(process.argv[2]);
const definition = protoLoader.loadSync(cfg.proto, {
  keepCase: true, longs: String, enums: String, defaults: true, includeDirs: cfg.include_dirs || [],
});
const JobWorker = grpc.loadPackageDefinition(definition).jobworker.v1.JobWorker;
const credentials = grpc.credentials.createSsl(
  fs.readFileSync(cfg.ca), fs.readFileSync(cfg.key), fs.readFileSync(cfg.cert));
const options = {
  'grpc.keepalive_time_ms': cfg.keepalive_time_ms,
  'grpc.keepalive_timeout_ms': 20000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.use_local_subchannel_pool': 1,  // each client its own connection
};
const waiter = new JobWorker(cfg.addr, credentials, options);
const idler = cfg.idle_channel ? new JobWorker(cfg.addr, credentials, options) : null;

function say(step, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ step }, fields)) + '\n');
}

function summary(job) {
  return { id: job.id, state: job.state, reason: job.reason, exit_code: job.exit_code };
}

function done(code) {
  waiter.close();
  if (idler) idler.close();
  process.exitCode = code;
}

function fail(call, err) {
  say('error', { call, code: grpc.status[err.code] || String(err.code), details: err.details || String(err) });
  done(1);
}

function askIdler(id) {
  idler.GetJob({ job_id: id }, (err, job) => {
    if (err) return fail('GetJob', err);
    say('idle_channel', { job: summary(job) });
    done(0);
  });
}

function startAndWait() {
  const request = { name: 'grpc-js keepalive', command: { command: cfg.argv[0], arguments: cfg.argv.slice(1) } };
  waiter.StartJob(request, (err, job) => {
    if (err) return fail('StartJob', err);
    say('started', { id: job.id });
    waiter.WaitJob({ job_id: job.id }, (err2, finished) => {
      if (err2) return fail('WaitJob', err2);
      say('finished', { job: summary(finished) });
      if (idler) askIdler(job.id); else done(0);
    });
  });
}

if (idler) {
  // Connected (TLS and HTTP/2 set up), with no call: from here on this connection only pings.
  idler.waitForReady(Date.now() + 30000, (err) => {
    if (err) return fail('connect', err);
    say('idle_channel_ready', {});
    startAndWait();
  });
} else {
  startAndWait();
}
