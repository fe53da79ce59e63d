//! Back ends shared by the helpers: the local store, the directory, the PBX
//! interface with the Asterisk AMI client behind it, and the CGP CLI client.

pub mod ami;
pub mod cgp_cli;
pub mod cloudpbx;
pub mod directory;
pub mod http;
pub mod ldap;
pub mod pbx;
pub mod store;
