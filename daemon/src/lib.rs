//! kcld as a library: the daemon's core, so that the binary stays a thin
//! shell and tests (or an application embedding kcld) drive the same code.
//!
//! See ARCHITECTURE.md at the repository root for the codemap.

#![deny(missing_docs)]

pub mod aws;
pub mod backoff;
pub mod builder;
pub mod cli;
pub mod doctor;
pub mod error;
pub mod lifecycle;
pub mod logging;
pub mod memory;
pub mod multilang;
pub mod ops;
pub mod policy;
pub mod record;
pub mod reload;
pub mod retrieval;
pub mod shutdown;
pub mod sink;
pub mod status;
pub mod stream;
pub mod worker;

pub use builder::{Consumer, ConsumerBuilder};
pub use error::{Error, Result};
