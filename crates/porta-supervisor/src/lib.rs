//! The per-container supervisor: holds the container's capabilities and keeps its servers alive.
