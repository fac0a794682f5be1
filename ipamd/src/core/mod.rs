//! The pure core: the address book ([`datastore`]) and the warm-pool policy ([`pool`]). No I/O, no clock, no
//! locks: the engine ([`crate::engine`]) owns the state and the outside worlds and asks the core what to do.

pub mod datastore;
pub mod pool;
