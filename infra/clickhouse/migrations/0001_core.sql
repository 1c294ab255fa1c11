-- Core schema. Physical tables keep every version of derived state
-- (ReplacingMergeTree keyed on the natural id, newest `version` wins,
-- `is_deleted` tombstones ids that a rewrite made disappear). Analysts query
-- the views named after the domain (touchpoints, journeys, ...), which always
-- return current state.

-- The canonical touchpoint log: the source of truth every derived table can be
-- rebuilt from. Identifiers of PII types hold keyed hashes, never raw values.
CREATE TABLE IF NOT EXISTS events
(
    event_id     String,
    occurred_at  DateTime64(3, 'UTC'),
    received_at  DateTime64(3, 'UTC'),
    channel      LowCardinality(String),
    source       LowCardinality(String),
    action       LowCardinality(String),
    identifiers  Array(Tuple(type LowCardinality(String), value String)),
    properties   String CODEC(ZSTD(3)),
    persona      LowCardinality(String),
    sentiment    Nullable(Float64),
    value        Nullable(Float64),
    currency     LowCardinality(String),
    ingested_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY event_id;

-- Unmerge requests: an identifier that must no longer link anything.
CREATE TABLE IF NOT EXISTS identity_unlinks
(
    identifier_type  LowCardinality(String),
    identifier_value String,
    requested_at     DateTime64(3, 'UTC'),
    reason           String
)
ENGINE = ReplacingMergeTree(requested_at)
ORDER BY (identifier_type, identifier_value);

CREATE TABLE IF NOT EXISTS touchpoint_versions
(
    event_id     String,
    customer_id  String,
    journey_id   String,
    seq          UInt32,
    occurred_at  DateTime64(3, 'UTC'),
    received_at  DateTime64(3, 'UTC'),
    channel      LowCardinality(String),
    source       LowCardinality(String),
    action       LowCardinality(String),
    phase        LowCardinality(String),
    rule         LowCardinality(String),
    is_passive   UInt8,
    is_failure   UInt8,
    failure_rule LowCardinality(String),
    is_conversion UInt8,
    sentiment    Nullable(Float32),
    value        Nullable(Float64),
    currency     LowCardinality(String),
    persona      LowCardinality(String),
    properties   String CODEC(ZSTD(3)),
    version      UInt64,
    written_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS journey_versions
(
    journey_id          String,
    customer_id         String,
    persona             LowCardinality(String),
    status              LowCardinality(String),
    started_at          DateTime64(3, 'UTC'),
    ended_at            DateTime64(3, 'UTC'),
    last_active_at      Nullable(DateTime64(3, 'UTC')),
    entry_channel       LowCardinality(String),
    last_phase          LowCardinality(String),
    last_channel        LowCardinality(String),
    last_action         LowCardinality(String),
    dropoff_phase       LowCardinality(String),
    dropoff_channel     LowCardinality(String),
    dropoff_action      LowCardinality(String),
    dropoff_event_id    String,
    phases_reached      Array(LowCardinality(String)),
    phase_reached_at    Array(DateTime64(3, 'UTC')),
    skipped_phases      Array(LowCardinality(String)),
    regressions         UInt16,
    regression_from     Array(LowCardinality(String)),
    regression_to       Array(LowCardinality(String)),
    regression_at       Array(DateTime64(3, 'UTC')),
    touchpoint_count    UInt32,
    active_touchpoint_count UInt32,
    web_touchpoints     UInt32,
    email_touchpoints   UInt32,
    phone_touchpoints   UInt32,
    social_touchpoints  UInt32,
    failure_count       UInt32,
    channel_switches    UInt16,
    switch_from         Array(LowCardinality(String)),
    switch_to           Array(LowCardinality(String)),
    switch_at           Array(DateTime64(3, 'UTC')),
    switch_gap_seconds  Array(UInt32),
    switch_phase        Array(LowCardinality(String)),
    switch_after_failure Array(UInt8),
    switch_failure_action Array(LowCardinality(String)),
    converted           UInt8,
    converted_at        Nullable(DateTime64(3, 'UTC')),
    revenue             Float64,
    emotion_points      UInt32,
    emotion_peak        Nullable(Float32),
    emotion_low         Nullable(Float32),
    emotion_high        Nullable(Float32),
    emotion_end         Nullable(Float32),
    emotion_mean        Nullable(Float32),
    watermark           DateTime64(3, 'UTC'),
    version             UInt64,
    is_deleted          UInt8,
    written_at          DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY journey_id;

CREATE TABLE IF NOT EXISTS identity_merge_versions
(
    event_id            String,
    occurred_at         DateTime64(3, 'UTC'),
    survivor_customer_id String,
    absorbed_customer_id String,
    identifier_type     LowCardinality(String),
    identifier_value    String,
    linked_type         LowCardinality(String),
    linked_value        String,
    version             UInt64,
    is_deleted          UInt8,
    written_at          DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (event_id, absorbed_customer_id);

CREATE TABLE IF NOT EXISTS identity_conflict_versions
(
    event_id            String,
    occurred_at         DateTime64(3, 'UTC'),
    reason              LowCardinality(String),
    identifier_type     LowCardinality(String),
    identifier_value    String,
    linked_type         LowCardinality(String),
    linked_value        String,
    customer_ids        Array(String),
    version             UInt64,
    is_deleted          UInt8,
    written_at          DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (event_id, identifier_type, identifier_value, linked_type, linked_value);

-- Current identifier → customer assignment.
CREATE TABLE IF NOT EXISTS identity_versions
(
    identifier_type  LowCardinality(String),
    identifier_value String,
    customer_id      String,
    version          UInt64,
    written_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (identifier_type, identifier_value);

-- Records that could not become touchpoints, with the reason and their own bytes.
-- Keyed on a fingerprint of the record so a re-run does not duplicate them.
CREATE TABLE IF NOT EXISTS dead_letter_log
(
    fingerprint  String,
    received_at  DateTime64(3, 'UTC'),
    format       LowCardinality(String),
    origin       String,
    reason       String,
    raw          String CODEC(ZSTD(3)),
    run_id       String
)
ENGINE = ReplacingMergeTree(received_at)
ORDER BY fingerprint;

-- One row per `journeys run` / demo / worker batch: the accounting of every record.
CREATE TABLE IF NOT EXISTS runs
(
    run_id           String,
    command          LowCardinality(String),
    started_at       DateTime64(3, 'UTC'),
    finished_at      DateTime64(3, 'UTC'),
    inputs           Array(String),
    records_read     UInt64,
    touchpoints_new  UInt64,
    duplicates       UInt64,
    dead_letters     UInt64,
    journeys_written UInt64,
    journeys_deleted UInt64,
    watermark        Nullable(DateTime64(3, 'UTC'))
)
ENGINE = MergeTree
ORDER BY started_at;

-- Analyst-facing views: current state only.
CREATE VIEW IF NOT EXISTS touchpoints AS
SELECT * EXCEPT (version, written_at)
FROM touchpoint_versions FINAL;

CREATE VIEW IF NOT EXISTS journeys AS
SELECT * EXCEPT (version, is_deleted, written_at)
FROM journey_versions FINAL
WHERE is_deleted = 0;

CREATE VIEW IF NOT EXISTS identity_merges AS
SELECT * EXCEPT (version, is_deleted, written_at)
FROM identity_merge_versions FINAL
WHERE is_deleted = 0;

CREATE VIEW IF NOT EXISTS identity_conflicts AS
SELECT * EXCEPT (version, is_deleted, written_at)
FROM identity_conflict_versions FINAL
WHERE is_deleted = 0;

CREATE VIEW IF NOT EXISTS identities AS
SELECT identifier_type, identifier_value, customer_id
FROM identity_versions FINAL;

CREATE VIEW IF NOT EXISTS dead_letters AS
SELECT received_at, format, origin, reason, raw, fingerprint, run_id
FROM dead_letter_log FINAL;

CREATE VIEW IF NOT EXISTS channel_switches AS
SELECT
    journey_id, customer_id, persona, status,
    switch_from[i] AS from_channel,
    switch_to[i] AS to_channel,
    switch_at[i] AS switched_at,
    switch_gap_seconds[i] AS gap_seconds,
    switch_phase[i] AS phase,
    switch_after_failure[i] AS after_failure,
    switch_failure_action[i] AS failure_action
FROM journeys
ARRAY JOIN arrayEnumerate(switch_from) AS i;

CREATE VIEW IF NOT EXISTS phase_transitions AS
SELECT
    journey_id, customer_id, persona, status, entry_channel,
    phases_reached[i] AS from_phase,
    phases_reached[i + 1] AS to_phase,
    phase_reached_at[i] AS from_at,
    phase_reached_at[i + 1] AS to_at,
    dateDiff('second', phase_reached_at[i], phase_reached_at[i + 1]) AS seconds
FROM journeys
ARRAY JOIN arrayEnumerate(phases_reached) AS i
WHERE i < length(phases_reached);

CREATE VIEW IF NOT EXISTS customers AS
SELECT
    customer_id,
    argMax(persona, ended_at) AS persona,
    count() AS journeys,
    countIf(converted = 1) AS converted_journeys,
    min(started_at) AS first_seen_at,
    max(ended_at) AS last_seen_at,
    sum(touchpoint_count) AS touchpoints,
    sum(revenue) AS revenue
FROM journeys
GROUP BY customer_id;
