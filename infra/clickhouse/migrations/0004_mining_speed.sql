-- Mining views that stay fast on millions of touchpoints (measured by `journeys bench`,
-- docs/bench.md). Results are unchanged; what changes is where the work happens:
--
-- 1. `detail` (page path, campaign, queue, platform) is computed once per row when it is
--    inserted, as a MATERIALIZED column of touchpoint_versions, instead of parsing the
--    properties JSON up to five times per row in every query. `SELECT *` (and so the
--    `touchpoints` view) does not return MATERIALIZED columns; rows written before this
--    migration compute it on read.
-- 2. `dropoff_points` no longer builds `touchpoint_details` (a window over every
--    touchpoint) twice and joins it: the drop-off touchpoint and the move before it are
--    found among the dropped journeys' touchpoints only, by sequence number (`seq` is the
--    position in the journey), and the journeys passing each point are counted straight
--    from the table.
ALTER TABLE touchpoint_versions ADD COLUMN IF NOT EXISTS detail String MATERIALIZED
    multiIf(
        channel = 'web', coalesce(
            nullIf(JSONExtractString(properties, 'path'), ''),
            nullIf(JSONExtractString(properties, 'screen_name'), ''),
            nullIf(JSONExtractString(properties, 'product_id'), ''),
            if(JSONHas(properties, 'step'), concat('step ', JSONExtractRaw(properties, 'step')), NULL),
            ''),
        channel = 'email', coalesce(
            nullIf(JSONExtractString(properties, 'campaign'), ''),
            nullIf(JSONExtractString(properties, 'subject'), ''),
            nullIf(arrayStringConcat(JSONExtract(properties, 'category', 'Array(String)'), ','), ''),
            ''),
        channel = 'phone', JSONExtractString(properties, 'queue'),
        channel = 'social', JSONExtractString(properties, 'platform'),
        ''
    );

CREATE OR REPLACE VIEW touchpoint_details AS
SELECT
    event_id, customer_id, journey_id, seq, occurred_at, channel, source, action, phase,
    is_passive, is_failure, is_conversion, sentiment, persona, detail,
    lagInFrame(channel, 1, '') OVER w AS previous_channel,
    lagInFrame(action, 1, '') OVER w AS previous_action,
    lagInFrame(phase, 1, '') OVER w AS previous_phase
FROM touchpoint_versions FINAL
WINDOW w AS (PARTITION BY journey_id ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW);

CREATE OR REPLACE VIEW dropoff_points AS
WITH
    dropped AS (
        SELECT journey_id, dropoff_event_id FROM journeys WHERE status = 'dropped'
    ),
    dropoff_seqs AS (
        SELECT journey_id, seq AS dropoff_seq
        FROM touchpoint_versions FINAL
        WHERE event_id IN (SELECT dropoff_event_id FROM dropped)
    ),
    last_moves AS (
        SELECT
            journey_id,
            argMaxIf((phase, channel, action, detail), seq, seq = dropoff_seq) AS left_at,
            argMaxIf((channel, action), seq, seq < dropoff_seq) AS just_before
        FROM
        (
            SELECT journey_id, seq, phase, channel, action, detail
            FROM touchpoint_versions FINAL
            WHERE journey_id IN (SELECT journey_id FROM dropped)
        ) AS t
        INNER JOIN dropoff_seqs USING (journey_id)
        WHERE seq <= dropoff_seq
        GROUP BY journey_id
    ),
    passed AS (
        SELECT phase, channel, action, detail, uniqExact(journey_id) AS journeys_passing
        FROM touchpoint_versions FINAL
        GROUP BY phase, channel, action, detail
    )
SELECT
    left_at.1 AS phase, left_at.2 AS channel, left_at.3 AS action, left_at.4 AS detail,
    count() AS dropped_journeys,
    any(passed.journeys_passing) AS journeys_passing,
    round(dropped_journeys / journeys_passing, 4) AS dropoff_rate,
    topK(3)(concat(just_before.1, ':', just_before.2)) AS did_just_before
FROM last_moves
INNER JOIN passed ON passed.phase = left_at.1 AND passed.channel = left_at.2
    AND passed.action = left_at.3 AND passed.detail = left_at.4
GROUP BY phase, channel, action, detail
ORDER BY dropped_journeys DESC, phase, channel, action, detail;
