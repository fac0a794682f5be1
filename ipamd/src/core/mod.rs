//! The pure core: the address book ([`datastore`]), the address families ([`family`]), the warm-pool policy ([`pool`]), and the plain copy of the pool that reporting reads ([`snapshot`]). No I/O, no clock, no
//! locks: the engine ([`crate::engine`]) owns the state and the outside worlds and asks the core what to do.

pub mod datastore;
pub mod family;
pub mod pool;
pub mod snapshot;
