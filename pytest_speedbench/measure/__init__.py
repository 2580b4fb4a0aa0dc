"""Stage 3, measurement: the records the client takes, the SSE transport, the load generator and its shards."""
