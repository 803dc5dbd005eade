//! Per-architecture machinery for the trap and rewrite tiers.
