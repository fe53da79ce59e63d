//! The CommuniGate Pro Helper protocol for the cgp-helpers suite.
//!
//! - [`data`]: the CGP data model (atoms, quoted strings, arrays,
//!   dictionaries, `#NULL#`), a parser that never panics and an encoder;
//! - [`request`]: request lines and reply bodies;
//! - [`runtime`]: the protocol loop every helper binary runs on;
//! - [`sync`]: locks that a panicking holder does not poison for the rest.

pub mod data;
pub mod request;
pub mod runtime;
pub mod sync;

pub use data::Value;
pub use request::{Reply, Request};
pub use runtime::{Ctx, Helper, HelperInfo};
