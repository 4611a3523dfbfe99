//! Airlock ingester.
