//! The CommuniGate Pro Helper wire for the cgp-helpers suite: what travels
//! on the pipes, with no runtime behind it (no threads, no async), so that
//! the CGP-side simulator and the fuzz target link it alone.
//!
//! - [`data`]: the CGP data model (atoms, quoted strings, arrays,
//!   dictionaries, `#NULL#`), a parser that never panics and an encoder;
//! - [`request`]: request lines and reply bodies;
//! - [`shape`]: what a request looks like without what it says, for helpers
//!   whose grammar is reconstructed to report requests they do not know.

pub mod data;
pub mod request;
pub mod shape;

pub use data::Value;
pub use request::{Reply, Request};
