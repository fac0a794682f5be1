//! The daemon's commands, each a thin module over the library: [`run`] (`ipamd run`: assembles the EC2 stack,
//! the host, the node and the servers, then waits for a signal), [`install`] (`ipamd install`: the init
//! container's job), [`status`] (`ipamd status`), [`probe`] (`ipamd health` and the installer's readiness wait)
//! and [`demo`] (`ipamd demo`). `main.rs` only parses the command line and calls one of them.

pub mod demo;
pub mod install;
pub mod probe;
pub mod run;
pub mod status;
