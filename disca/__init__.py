"""Host-free DisCa core: weight formats, schedules, per-run state and predictor composition."""
