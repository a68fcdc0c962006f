//! Inputs shared by the benches: realistic GetRecords bodies and KPL
//! aggregates, generated deterministically so every run measures the same
//! bytes.
