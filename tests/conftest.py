"""Shared fixtures. Real servers (the Kafka-protocol broker, the S3 endpoint) start once per
session on free loopback ports; a missing server is a failure, never a skip."""

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.s3",
    "tests.fixtures.ray",
]
