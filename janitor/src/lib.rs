//! Airlock janitor.
