-- Drop-off points by number: `dropoff_points` at 10M touchpoints took 0.7–1.25 s (issue 5's
-- target is 1 s), most of it exploding every journey's points as four-string tuples, grouping by
-- them, and a hash join on journey ids (docs/bench.md, "Drop-off points by number"). Results are
-- unchanged; the points travel as numbers and are named once at the end.
--
-- 1. A point (phase, channel, action, detail) is known by `point_id = cityHash64(phase, channel,
--    action, detail)`. cityHash64 over several arguments hashes each one and combines them, so
--    ('ab', 'c') and ('a', 'bc') differ. Two distinct points sharing an id is a 64-bit collision:
--    about n² / 2⁶⁵, one in 36 million for a million distinct points.
-- 2. `journey_points` names every point seen: one row per point per insert block (a materialized
--    view's DISTINCT on each insert into `touchpoint_versions`), merged by ReplacingMergeTree.
--    Readers take any row of a point_id: every row of one id carries the same names.
-- 3. `journey_point_ids` replaces `journey_point_rollups` (migration 0005) row for row, with the
--    point tuples replaced by their ids: per journey, every point id with the newest version it
--    was written in (maxMap), the journey's newest version (max), and the detail of its newest
--    customer move. Its materialized view needs a journey version's touchpoints in one insert
--    block, as 0005's did (`_insert_touchpoints` in processors/sinks/clickhouse.py).
--
-- Order, so that a writer inserting during the migration loses nothing: the new materialized
-- views start first, then the new tables are filled from the old rollups, then the old ones go.
-- A touchpoint inserted in between reaches both; max and maxMap are idempotent and the names are
-- replaced, so counting it twice changes nothing.
CREATE TABLE IF NOT EXISTS journey_points
(
    point_id  UInt64,
    phase     LowCardinality(String),
    channel   LowCardinality(String),
    action    LowCardinality(String),
    detail    String
)
ENGINE = ReplacingMergeTree
ORDER BY point_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS journey_points_mv TO journey_points AS
SELECT DISTINCT
    cityHash64(t.phase, t.channel, t.action, t.detail) AS point_id,
    t.phase AS phase, t.channel AS channel, t.action AS action, t.detail AS detail
FROM touchpoint_versions AS t;

CREATE TABLE IF NOT EXISTS journey_point_ids
(
    journey_id  String,
    version     SimpleAggregateFunction(max, UInt64),
    points      SimpleAggregateFunction(maxMap, Tuple(Array(UInt64), Array(UInt64))),
    last_move   SimpleAggregateFunction(max, Tuple(UInt64, UInt32, String))
)
ENGINE = AggregatingMergeTree
ORDER BY journey_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS journey_point_ids_mv TO journey_point_ids AS
SELECT
    t.journey_id AS journey_id,
    max(t.version) AS version,
    maxMap(([cityHash64(t.phase, t.channel, t.action, t.detail)], [t.version])) AS points,
    maxIf((t.version, t.seq, t.detail), t.is_passive = 0) AS last_move
FROM touchpoint_versions AS t
GROUP BY t.journey_id;

-- The points stored before this migration, from the old rollups (which hold every version's).
INSERT INTO journey_points
SELECT DISTINCT cityHash64(p.1, p.2, p.3, p.4) AS point_id, p.1 AS phase, p.2 AS channel,
    p.3 AS action, p.4 AS detail
FROM journey_point_rollups
ARRAY JOIN points.1 AS p;

INSERT INTO journey_point_ids
SELECT
    journey_id,
    version,
    (arrayMap(p -> cityHash64(p.1, p.2, p.3, p.4), points.1), points.2) AS points,
    last_move
FROM journey_point_rollups;

-- Drop-off points in two passes over the live journeys' current points, joined by point id:
-- * passing: every journey passing a point counts once (a journey's points are distinct);
-- * left: a dropped journey counts as left at its drop-off touchpoint's point, when that point is
--   one of its current points (as 0005's countIf over the exploded points), with what it did
--   just before; only dropped journeys are read, and nothing is exploded.
-- A rollup row whose newest version is the journey's current one holds all its current points:
-- older rows (not yet merged) and tombstoned journeys fall out of the join, so no FINAL is needed
-- on the rollups. Both sides are sorted by journey_id, so a sort-merge join beats hashing
-- 10M-touchpoint journeys' string ids (0.06 s against 0.2 s at 360k journeys).
CREATE OR REPLACE VIEW dropoff_points AS
SELECT
    n.phase AS phase, n.channel AS channel, n.action AS action, n.detail AS detail,
    l.dropped_journeys AS dropped_journeys,
    p.journeys_passing AS journeys_passing,
    round(dropped_journeys / journeys_passing, 4) AS dropoff_rate,
    l.did_just_before AS did_just_before
FROM
(
    SELECT point_id, count() AS journeys_passing
    FROM
    (
        SELECT arrayFilter((point, seen) -> seen = j.version, r.points.1, r.points.2) AS point_ids
        FROM journey_point_ids AS r
        INNER JOIN
        (
            SELECT journey_id, version FROM journey_versions FINAL WHERE is_deleted = 0
        ) AS j ON j.journey_id = r.journey_id AND j.version = r.version
    )
    ARRAY JOIN point_ids AS point_id
    GROUP BY point_id
) AS p
INNER JOIN
(
    SELECT left_at AS point_id, count() AS dropped_journeys, topK(3)(just_before) AS did_just_before
    FROM
    (
        SELECT
            arrayFilter((point, seen) -> seen = j.version, r.points.1, r.points.2) AS point_ids,
            cityHash64(j.dropoff_phase, j.dropoff_channel, j.dropoff_action,
                if(r.last_move.1 = j.version, r.last_move.3, '')) AS left_at,
            concat(j.dropoff_previous_channel, ':', j.dropoff_previous_action) AS just_before
        FROM journey_point_ids AS r
        INNER JOIN
        (
            SELECT journey_id, version, dropoff_phase, dropoff_channel, dropoff_action,
                   dropoff_previous_channel, dropoff_previous_action
            FROM journey_versions FINAL
            WHERE is_deleted = 0 AND status = 'dropped'
        ) AS j ON j.journey_id = r.journey_id AND j.version = r.version
    )
    WHERE has(point_ids, left_at)
    GROUP BY point_id
) AS l ON l.point_id = p.point_id
INNER JOIN
(
    SELECT point_id, any(phase) AS phase, any(channel) AS channel, any(action) AS action,
           any(detail) AS detail
    FROM journey_points
    GROUP BY point_id
) AS n ON n.point_id = p.point_id
ORDER BY dropped_journeys DESC, phase, channel, action, detail
SETTINGS join_algorithm = 'full_sorting_merge';

DROP VIEW IF EXISTS journey_point_rollups_mv;
DROP TABLE IF EXISTS journey_point_rollups;
