-- Phase-order anomalies gain `reversed`: a phase first reached after a later one
-- (e.g. consideration only after purchase), besides skipped phases and regressions.
CREATE OR REPLACE VIEW phase_anomalies AS
SELECT journey_id, customer_id, persona, status, 'skipped' AS kind, phase AS from_phase, '' AS to_phase,
       CAST(NULL, 'Nullable(DateTime64(3, \'UTC\'))') AS at
FROM journeys ARRAY JOIN skipped_phases AS phase
UNION ALL
SELECT journey_id, customer_id, persona, status, 'regression' AS kind, from_phase, to_phase,
       CAST(at, 'Nullable(DateTime64(3, \'UTC\'))') AS at
FROM journeys ARRAY JOIN regression_from AS from_phase, regression_to AS to_phase, regression_at AS at
UNION ALL
SELECT journey_id, customer_id, persona, status, 'reversed' AS kind,
       phases_reached[i] AS from_phase, phases_reached[i + 1] AS to_phase,
       CAST(phase_reached_at[i + 1], 'Nullable(DateTime64(3, \'UTC\'))') AS at
FROM journeys ARRAY JOIN arrayEnumerate(phases_reached) AS i
WHERE i < length(phases_reached)
  AND indexOf(['orientation', 'consideration', 'purchase', 'usage', 'retention'], phases_reached[i + 1])
    < indexOf(['orientation', 'consideration', 'purchase', 'usage', 'retention'], phases_reached[i]);
