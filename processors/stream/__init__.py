"""The streaming shell: Faust workers around the same core as the embedded runner.

Stages (topics in `ingest.topics`):

1. **normalise** (`raw.*` → `touchpoints`, `dead-letters`): the ingest pipeline
   on Kafka batches; scales with the raw topics' partitions.
2. **reconstruct** (`touchpoints` → `state`, `dead-letters`): the event log in a
   changelog-backed table, the `Reconstruction` aggregate rebuilt from it, and
   `journeys.live.LiveReconstruction` turning each batch into changed customers.
3. **sink** (`state`, `dead-letters` → ClickHouse): its own consumer process, so
   exactly one process writes an embedded chDB database; against a ClickHouse
   server several sinks can share the partitions.
"""
