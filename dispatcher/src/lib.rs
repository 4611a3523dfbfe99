//! Airlock dispatcher.
