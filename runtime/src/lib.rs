//! Airlock runtime.
