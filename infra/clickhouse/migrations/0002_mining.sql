-- Journey mining: where customers leave, where they switch channel, what moves them.
-- Every view reads the current-state views (touchpoints, journeys), so corrections
-- (late events, identity merges, unlinks) show up in the next query. docs/cookbook.md
-- shows how to use each one; tests/processors/test_mining.py runs them on the demo.

-- One touchpoint with what it was about and its neighbours in the journey.
-- `detail`: the page path / product / checkout step (web), campaign or category
-- (email), queue (phone), platform (social).
CREATE VIEW IF NOT EXISTS touchpoint_details AS
SELECT
    event_id, customer_id, journey_id, seq, occurred_at, channel, source, action, phase,
    is_passive, is_failure, is_conversion, sentiment, persona,
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
    ) AS detail,
    lagInFrame(channel, 1, '') OVER w AS previous_channel,
    lagInFrame(action, 1, '') OVER w AS previous_action,
    lagInFrame(phase, 1, '') OVER w AS previous_phase
FROM touchpoints
WINDOW w AS (PARTITION BY journey_id ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW);

-- One row per journey and phase reached, with the step to the next phase of the five.
CREATE VIEW IF NOT EXISTS journey_phases AS
SELECT
    journey_id, customer_id, persona, status, entry_channel, started_at,
    toStartOfMonth(started_at) AS period,
    phase,
    indexOf(['orientation', 'consideration', 'purchase', 'usage', 'retention'], phase) AS phase_order,
    reached_at,
    indexOf(phases_reached, ['orientation', 'consideration', 'purchase', 'usage', 'retention', ''][phase_order + 1])
        AS next_index,
    if(next_index > 0, phase_reached_at[next_index], NULL) AS next_reached_at,
    if(next_index > 0, dateDiff('second', reached_at, phase_reached_at[next_index]), NULL) AS seconds_to_next
FROM journeys
ARRAY JOIN phases_reached AS phase, phase_reached_at AS reached_at;

-- The phase funnel over all journeys: reach, conversion to the next phase, time to it.
CREATE VIEW IF NOT EXISTS phase_funnel AS
SELECT
    phase,
    any(phase_order) AS phase_order,
    uniqExact(journey_id) AS journeys,
    countIf(seconds_to_next IS NOT NULL) AS reached_next,
    round(reached_next / journeys, 4) AS conversion_to_next,
    quantileExactIf(0.5)(seconds_to_next, seconds_to_next IS NOT NULL) AS median_seconds_to_next,
    quantileExactIf(0.9)(seconds_to_next, seconds_to_next IS NOT NULL) AS p90_seconds_to_next
FROM journey_phases
GROUP BY phase
ORDER BY phase_order;

-- Drop-off points: where dropped journeys were left, against how many journeys passed there.
CREATE VIEW IF NOT EXISTS dropoff_points AS
WITH
    dropped AS (
        SELECT d.phase, d.channel, d.action, d.detail, d.journey_id, d.previous_channel, d.previous_action
        FROM journeys AS j
        INNER JOIN touchpoint_details AS d ON d.event_id = j.dropoff_event_id
        WHERE j.status = 'dropped'
    ),
    passed AS (
        SELECT phase, channel, action, detail, uniqExact(journey_id) AS journeys_passing
        FROM touchpoint_details
        GROUP BY phase, channel, action, detail
    )
SELECT
    dropped.phase AS phase, dropped.channel AS channel, dropped.action AS action, dropped.detail AS detail,
    count() AS dropped_journeys,
    any(passed.journeys_passing) AS journeys_passing,
    round(dropped_journeys / journeys_passing, 4) AS dropoff_rate,
    topK(3)(concat(dropped.previous_channel, ':', dropped.previous_action)) AS did_just_before
FROM dropped
INNER JOIN passed USING (phase, channel, action, detail)
GROUP BY phase, channel, action, detail
ORDER BY dropped_journeys DESC, phase, channel, action, detail;

-- Channel-switch matrix: from -> to per phase, with the gap and the share after a failure.
CREATE VIEW IF NOT EXISTS channel_switch_matrix AS
SELECT
    from_channel, to_channel, phase,
    count() AS switches,
    quantileExact(0.5)(gap_seconds) AS median_gap_seconds,
    round(avg(after_failure), 4) AS share_after_failure,
    topKIf(3)(failure_action, after_failure = 1) AS top_failures
FROM channel_switches
GROUP BY from_channel, to_channel, phase
ORDER BY switches DESC, from_channel, to_channel, phase;

-- Path variants: each journey's customer moves as phase:channel:action, consecutive
-- repeats collapsed; `loops` counts steps that come back after something else happened.
CREATE VIEW IF NOT EXISTS journey_paths AS
SELECT
    journey_id, customer_id, persona, status,
    arrayFilter((step, i) -> i = 1 OR step != raw_steps[i - 1], raw_steps, arrayEnumerate(raw_steps)) AS steps,
    arrayStringConcat(steps, ' > ') AS path,
    length(steps) - length(arrayDistinct(steps)) AS loops
FROM
(
    SELECT journey_id, any(customer_id) AS customer_id, any(persona) AS persona,
        arrayMap(x -> x.2, arraySort(x -> x.1, groupArray((seq, concat(phase, ':', channel, ':', action)))))
            AS raw_steps
    FROM touchpoints
    WHERE is_passive = 0
    GROUP BY journey_id
) AS moves
INNER JOIN (SELECT journey_id, status FROM journeys) AS j USING (journey_id);

CREATE VIEW IF NOT EXISTS path_variants AS
SELECT
    status, path, count() AS journeys, round(avg(loops), 2) AS avg_loops, any(length(steps)) AS steps
FROM journey_paths
WHERE status IN ('converted', 'retained', 'dropped')
GROUP BY status, path
ORDER BY journeys DESC, status, path;

-- Phase-order anomalies: skipped phases and regressions, one row each.
CREATE VIEW IF NOT EXISTS phase_anomalies AS
SELECT journey_id, customer_id, persona, status, 'skipped' AS kind, phase AS from_phase, '' AS to_phase,
       CAST(NULL, 'Nullable(DateTime64(3, \'UTC\'))') AS at
FROM journeys ARRAY JOIN skipped_phases AS phase
UNION ALL
SELECT journey_id, customer_id, persona, status, 'regression' AS kind, from_phase, to_phase,
       CAST(at, 'Nullable(DateTime64(3, \'UTC\'))') AS at
FROM journeys ARRAY JOIN regression_from AS from_phase, regression_to AS to_phase, regression_at AS at;

-- The emotion line per phase and touchpoint type (only touchpoints with a sentiment).
CREATE VIEW IF NOT EXISTS emotion_by_touchpoint AS
SELECT
    phase, channel, action,
    count() AS touchpoints,
    round(avg(sentiment), 3) AS mean_sentiment,
    round(toFloat64(min(sentiment)), 3) AS low,
    round(toFloat64(max(sentiment)), 3) AS high
FROM touchpoints
WHERE sentiment IS NOT NULL
GROUP BY phase, channel, action
ORDER BY indexOf(['orientation', 'consideration', 'purchase', 'usage', 'retention'], phase), mean_sentiment;

-- Moments of truth: touchpoint types whose presence most changes the odds of converting
-- or of dropping off. lift = rate among journeys with the touchpoint / rate among all
-- journeys (1 = no effect). Types seen in fewer than 20 journeys are left out (minimum
-- support), as are passive touchpoints and anything at or after a purchase.
CREATE VIEW IF NOT EXISTS moments_of_truth AS
WITH
    totals AS (
        SELECT count() AS all_journeys, countIf(converted = 1) AS all_converted,
               countIf(status = 'dropped') AS all_dropped
        FROM journeys
    ),
    presence AS (
        SELECT t.channel AS channel, t.action AS action, t.journey_id AS journey_id,
               any(j.converted) AS converted, any(j.status = 'dropped') AS dropped
        FROM touchpoints AS t
        INNER JOIN (SELECT journey_id, converted, converted_at, status FROM journeys) AS j USING (journey_id)
        -- Only what happened before the purchase can have decided it.
        WHERE t.is_passive = 0 AND t.is_conversion = 0 AND (j.converted = 0 OR t.occurred_at < j.converted_at)
        GROUP BY t.channel, t.action, t.journey_id
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

-- Emails that never precede progress: per campaign (or category), journeys that got the
-- email, opened it, and reached a later phase after it.
CREATE VIEW IF NOT EXISTS email_progress AS
SELECT
    detail AS campaign,
    uniqExact(journey_id) AS journeys_sent,
    uniqExactIf(journey_id, action IN ('open', 'click')) AS journeys_opened,
    uniqExactIf(journey_id, progressed) AS journeys_progressed,
    round(journeys_progressed / journeys_sent, 4) AS progress_rate
FROM
(
    SELECT e.journey_id AS journey_id, e.detail AS detail, e.action AS action,
           arrayExists((p, at) -> indexOf(['orientation', 'consideration', 'purchase', 'usage', 'retention'], p)
                   > indexOf(['orientation', 'consideration', 'purchase', 'usage', 'retention'], e.phase)
                   AND at > e.occurred_at,
               j.phases_reached, j.phase_reached_at) AS progressed
    FROM touchpoint_details AS e
    INNER JOIN (SELECT journey_id, phases_reached, phase_reached_at FROM journeys) AS j USING (journey_id)
    WHERE e.channel = 'email'
)
GROUP BY campaign
ORDER BY progress_rate, journeys_sent DESC;

-- Before/after: the funnel around a date, for checking whether a change helped.
--   SELECT * FROM funnel_before_after(cutoff = '2026-10-01 00:00:00')
CREATE VIEW IF NOT EXISTS funnel_before_after AS
SELECT
    if(started_at < {cutoff:DateTime64(3, 'UTC')}, 'before', 'after') AS side,
    phase,
    any(phase_order) AS phase_order,
    uniqExact(journey_id) AS journeys,
    countIf(seconds_to_next IS NOT NULL) AS reached_next,
    round(reached_next / journeys, 4) AS conversion_to_next
FROM journey_phases
GROUP BY side, phase
ORDER BY side DESC, phase_order;
