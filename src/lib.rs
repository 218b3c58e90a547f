#![recursion_limit = "256"]
//! gantry: a job-queue orchestration engine that speaks the Ganeti Remote API (RAPI v2).
//!
//! A request travels RAPI → opcode → job → executor → backend; the modules follow that flow.

pub mod agent;
pub mod automation;
pub mod backends;
pub mod backup;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod cmdlib;
pub mod control;
#[cfg(feature = "etcd")]
pub mod ha;
pub mod http;
pub mod jobqueue;
pub mod kv;
pub mod locking;
pub mod metrics;
pub mod opcodes;
pub mod qlang;
pub mod rapi;
pub mod space;
pub mod storage;
pub mod util;
pub mod validate;
pub mod views;
