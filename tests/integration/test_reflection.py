"""gRPC server reflection against the real daemon, through a real reflection client over mutual TLS:
the services are listed, their methods resolve to full descriptors, and a call built only from the
reflected descriptors (as grpcurl does, without the proto file or generated code) works."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from jobworkerd.gen.jobworker.v1 import jobworker_pb2 as pb

pytestmark = pytest.mark.root

JOBWORKER = "jobworker.v1.JobWorker"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"


@pytest.fixture
def channel(daemon):
    crt, key = daemon.cert("someone", "user")  # reflection needs no admin role, only a valid client certificate
    credentials = grpc.ssl_channel_credentials(Path(daemon.ca).read_bytes(), Path(key).read_bytes(), Path(crt).read_bytes())
    with grpc.secure_channel(daemon.addr, credentials) as chan:
        yield chan


def test_reflection_lists_the_api_and_health_services(channel):
    database = ProtoReflectionDescriptorDatabase(channel)
    assert set(database.get_services()) == {JOBWORKER, HEALTH, REFLECTION}


def test_reflected_jobworker_methods_match_the_proto(channel):
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    service = pool.FindServiceByName(JOBWORKER)
    expected = pb.DESCRIPTOR.services_by_name["JobWorker"]
    assert [m.name for m in service.methods] == [m.name for m in expected.methods]
    for method in service.methods:
        want = expected.methods_by_name[method.name]
        assert method.input_type.full_name == want.input_type.full_name
        assert method.output_type.full_name == want.output_type.full_name
        assert (method.client_streaming, method.server_streaming) == (want.client_streaming, want.server_streaming)
    assert service.methods_by_name["StreamOutput"].server_streaming
    # the dependency (google/protobuf/timestamp.proto) resolves through reflection too
    job = pool.FindMessageTypeByName("jobworker.v1.Job")
    assert job.fields_by_name["created_at"].message_type.full_name == "google.protobuf.Timestamp"


def test_reflected_health_service_resolves(channel):
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    health = pool.FindServiceByName(HEALTH)
    assert {m.name for m in health.methods} >= {"Check", "Watch"}
    check = message_factory.GetMessageClass(health.methods_by_name["Check"].input_type)
    response_type = message_factory.GetMessageClass(health.methods_by_name["Check"].output_type)
    call = channel.unary_unary(f"/{HEALTH}/Check", request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=response_type.FromString)
    reply = call(check(service=JOBWORKER), timeout=10)
    assert response_type.DESCRIPTOR.fields_by_name["status"].enum_type.values_by_number[reply.status].name == "SERVING"


def test_a_call_built_from_reflected_descriptors_only(daemon, channel):
    """What grpcurl does: no generated code, request and response types from reflection."""
    job_id = daemon.jobctl("run", "-d", "--", "true", name="someone", role="user").stdout.decode().strip()
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    method = pool.FindServiceByName(JOBWORKER).methods_by_name["GetJob"]
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    assert request_type is not pb.GetJobRequest  # built from the reflected descriptor, not the generated module
    call = channel.unary_unary(f"/{JOBWORKER}/GetJob", request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=response_type.FromString)
    job = call(request_type(job_id=job_id), timeout=10)
    assert job.id == job_id and job.owner == "someone"
