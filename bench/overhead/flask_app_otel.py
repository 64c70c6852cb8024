"""The same Flask service instrumented with OpenTelemetry's Python SDK, for comparison.

FlaskInstrumentor makes one SERVER span per request; a BatchSpanProcessor exports them over
OTLP/HTTP protobuf to OTEL_EXPORTER_OTLP_ENDPOINT (the benchmark's sink). gunicorn runs without
--preload, so this module (and the processor's export thread) is set up in each worker after the
fork.
"""
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from flask_app import app

provider = TracerProvider(resource=Resource.create({"service.name": "bench-flask-otel"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
FlaskInstrumentor().instrument_app(app)
