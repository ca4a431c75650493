//! The container's cgroups: one group per container with the `payload/` and `porta/` leaves.
