//! The appliance's boot services as a library: the `nasgw-appliance` binary runs them, and the
//! end-to-end tests call the same code (a blank node's replacement on a namespaced GlusterFS
//! pool, `tests/tests/gluster_replace.rs`).

pub mod disks;
pub mod provision;
pub mod system;
pub mod update;
