//! Back ends shared by the helpers: the local store, and (as their issues
//! land) the LDAP directory, the Asterisk AMI client and the CGP CLI client.

pub mod ami;
pub mod cgp_cli;
pub mod directory;
pub mod ldap;
pub mod store;
