-- `judge_velocity` runs its statements with generic plans. Their custom plans are no
-- better (every scan is driven by the counters passed in, through LATERAL joins), but
-- the planner estimates the generic ones dearer and so plans the statements again on
-- every call: measured in backend CPU time with load-shaped batches (every default rule
-- in shadow mode, consecutive numbers, a client address and id per request), a batch of
-- 4 costs about 9 % less and one of 128 about 1 % less.
ALTER FUNCTION judge_velocity(boolean[], integer[], integer[], text[], text[], text[],
                              float8[], bigint[], float8[], boolean[], jsonb[])
    SET plan_cache_mode = force_generic_plan;
