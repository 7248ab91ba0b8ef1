//! telemetry (to be written).
