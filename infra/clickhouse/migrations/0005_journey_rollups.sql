-- Per-journey rollups: the mining views read one row per journey instead of every touchpoint
-- (issue 5: each analyst query within 1 s at 10M touchpoints; docs/bench.md). Results are
-- unchanged; only where the work happens changes.
--
-- 1. Written on the journey row by the fold (journeys/fold.py), which computes them with the
--    rest of the journey. The journey row is rewritten as a whole (a new version, or a
--    tombstone) whenever the journey changes, so a rewrite never counts a touchpoint twice:
--    * path_steps: the customer moves as `phase:channel:action`, consecutive repeats collapsed
--      (`journey_paths`, `path_variants`);
--    * moment_channel / moment_action: the distinct (channel, action) of customer moves before
--      the first conversion, conversions excluded; every move when never converted
--      (`moments_of_truth`);
--    * dropoff_previous_channel / dropoff_previous_action: the touchpoint just before the
--      drop-off touchpoint (`dropoff_points.did_just_before`).
-- 2. The drop-off points a journey passed, (phase, channel, action, detail), need `detail`,
--    which is computed in SQL from the properties JSON (touchpoint_versions, migration 0004).
--    A materialized view rolls them up per journey as touchpoints are inserted, into
--    `journey_point_rollups`, an AggregatingMergeTree keyed by journey: every point with the
--    newest version it was written in (maxMap), the journey's newest version (max), and the
--    detail of its newest customer move (max of (version, seq, detail)). A journey's current
--    points are those seen in its newest version: every write of a journey writes all its
--    touchpoints with the journey's version, so older placements (a touchpoint moved to
--    another journey, a phase changed by a late event) drop out, and tombstoned journeys are
--    left out by joining the live `journeys`. max and maxMap are idempotent, so a repeated or
--    split insert changes nothing.
--
-- Journey rows written before this migration have empty fold columns until they are
-- rewritten: `journeys run` (with no input it replays the event log) rewrites every journey.
-- The point rollups are filled from the stored touchpoints here.
ALTER TABLE journey_versions ADD COLUMN IF NOT EXISTS dropoff_previous_channel LowCardinality(String) AFTER dropoff_event_id;
ALTER TABLE journey_versions ADD COLUMN IF NOT EXISTS dropoff_previous_action LowCardinality(String) AFTER dropoff_previous_channel;
ALTER TABLE journey_versions ADD COLUMN IF NOT EXISTS path_steps Array(LowCardinality(String)) AFTER watermark;
ALTER TABLE journey_versions ADD COLUMN IF NOT EXISTS moment_channel Array(LowCardinality(String)) AFTER path_steps;
ALTER TABLE journey_versions ADD COLUMN IF NOT EXISTS moment_action Array(LowCardinality(String)) AFTER moment_channel;

-- `journeys` is `SELECT * …`, fixed to the columns when it was created: recreate it to show the new ones.
CREATE OR REPLACE VIEW journeys AS
SELECT * EXCEPT (version, is_deleted, written_at)
FROM journey_versions FINAL
WHERE is_deleted = 0;

CREATE OR REPLACE VIEW journey_paths AS
SELECT
    journey_id, customer_id, persona, status,
    path_steps AS steps,
    arrayStringConcat(steps, ' > ') AS path,
    length(steps) - length(arrayDistinct(steps)) AS loops
FROM journeys
WHERE active_touchpoint_count > 0;

CREATE OR REPLACE VIEW moments_of_truth AS
WITH
    totals AS (
        SELECT count() AS all_journeys, countIf(converted = 1) AS all_converted,
               countIf(status = 'dropped') AS all_dropped
        FROM journeys
    ),
    presence AS (
        SELECT channel, action, converted, status = 'dropped' AS dropped
        FROM journeys
        ARRAY JOIN moment_channel AS channel, moment_action AS action
    )
SELECT
    channel, action,
    count() AS journeys_with,
    sum(converted) AS converted_with,
    round(converted_with / journeys_with, 4) AS conversion_with,
    round((any(totals.all_converted) - converted_with)
        / greatest(any(totals.all_journeys) - journeys_with, 1), 4) AS conversion_without,
    round(conversion_with / greatest(any(totals.all_converted) / any(totals.all_journeys), 0.0001), 3)
        AS conversion_lift,
    round(sum(dropped) / journeys_with, 4) AS dropoff_with,
    round((any(totals.all_dropped) - sum(dropped))
        / greatest(any(totals.all_journeys) - journeys_with, 1), 4) AS dropoff_without,
    round(dropoff_with / greatest(any(totals.all_dropped) / any(totals.all_journeys), 0.0001), 3) AS dropoff_lift
FROM presence
CROSS JOIN totals
GROUP BY channel, action
HAVING journeys_with >= 20
ORDER BY greatest(conversion_lift, dropoff_lift, 1 / greatest(conversion_lift, 0.01)) DESC, channel, action;

CREATE TABLE IF NOT EXISTS journey_point_rollups
(
    journey_id  String,
    version     SimpleAggregateFunction(max, UInt64),
    points      SimpleAggregateFunction(maxMap, Tuple(Array(Tuple(String, String, String, String)), Array(UInt64))),
    last_move   SimpleAggregateFunction(max, Tuple(UInt64, UInt32, String))
)
ENGINE = AggregatingMergeTree
ORDER BY journey_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS journey_point_rollups_mv TO journey_point_rollups AS
SELECT
    t.journey_id AS journey_id,
    max(t.version) AS version,
    maxMap(([CAST((t.phase, t.channel, t.action, t.detail), 'Tuple(String, String, String, String)')], [t.version]))
        AS points,
    maxIf((t.version, t.seq, t.detail), t.is_passive = 0) AS last_move
FROM touchpoint_versions AS t
GROUP BY t.journey_id;

-- The touchpoints stored before this migration: the materialized view's query over every stored
-- row (all versions; per point the newest wins, as above). A repeat of it changes nothing.
INSERT INTO journey_point_rollups
SELECT
    t.journey_id AS journey_id,
    max(t.version) AS version,
    maxMap(([CAST((t.phase, t.channel, t.action, t.detail), 'Tuple(String, String, String, String)')], [t.version]))
        AS points,
    maxIf((t.version, t.seq, t.detail), t.is_passive = 0) AS last_move
FROM touchpoint_versions AS t
GROUP BY t.journey_id;

-- Drop-off points in one pass over the live journeys' current points: every journey passing a
-- point counts once (a journey's points are distinct), and a dropped journey also counts as
-- left there when the point is its drop-off touchpoint's. A rollup row whose newest version is
-- the journey's current one holds all its current points: older rows (not yet merged) and
-- tombstoned journeys fall out of the join, so no FINAL is needed on the rollups.
CREATE OR REPLACE VIEW dropoff_points AS
SELECT
    toLowCardinality(point.1) AS phase, toLowCardinality(point.2) AS channel,
    toLowCardinality(point.3) AS action, point.4 AS detail,
    countIf(point = left_at) AS dropped_journeys,
    count() AS journeys_passing,
    round(dropped_journeys / journeys_passing, 4) AS dropoff_rate,
    topKIf(3)(just_before, point = left_at) AS did_just_before
FROM
(
    SELECT
        arrayFilter((point, seen) -> seen = j.version, r.points.1, r.points.2) AS points,
        if(j.status = 'dropped',
            (j.dropoff_phase, j.dropoff_channel, j.dropoff_action, if(r.last_move.1 = j.version, r.last_move.3, '')),
            ('', '', '', '')) AS left_at,
        concat(j.dropoff_previous_channel, ':', j.dropoff_previous_action) AS just_before
    FROM journey_point_rollups AS r
    INNER JOIN
    (
        SELECT journey_id, version, status, dropoff_phase, dropoff_channel, dropoff_action,
               dropoff_previous_channel, dropoff_previous_action
        FROM journey_versions FINAL
        WHERE is_deleted = 0
    ) AS j ON j.journey_id = r.journey_id AND j.version = r.version
)
ARRAY JOIN points AS point
GROUP BY point
HAVING dropped_journeys > 0
ORDER BY dropped_journeys DESC, phase, channel, action, detail;

-- The funnels count journey × phase rows: a journey reaches each phase once (phases_reached is
-- distinct) and appears once in `journeys`, so count() is the number of journeys, without
-- uniqExact's hash set of journey ids.
CREATE OR REPLACE VIEW phase_funnel AS
SELECT
    phase,
    any(phase_order) AS phase_order,
    count() AS journeys,
    countIf(seconds_to_next IS NOT NULL) AS reached_next,
    round(reached_next / journeys, 4) AS conversion_to_next,
    quantileExactIf(0.5)(seconds_to_next, seconds_to_next IS NOT NULL) AS median_seconds_to_next,
    quantileExactIf(0.9)(seconds_to_next, seconds_to_next IS NOT NULL) AS p90_seconds_to_next
FROM journey_phases
GROUP BY phase
ORDER BY phase_order;

CREATE OR REPLACE VIEW funnel_before_after AS
SELECT
    if(started_at < {cutoff:DateTime64(3, 'UTC')}, 'before', 'after') AS side,
    phase,
    any(phase_order) AS phase_order,
    count() AS journeys,
    countIf(seconds_to_next IS NOT NULL) AS reached_next,
    round(reached_next / journeys, 4) AS conversion_to_next
FROM journey_phases
GROUP BY side, phase
ORDER BY side DESC, phase_order;
