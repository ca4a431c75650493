//! The container's file server: a FUSE server confined to the container's backing storage.
