//! Commerce: the shop's customers, catalogue and orders ([`model`]), and the brand's machine
//! rules for what may be done to them ([`policy`]). Writes to commerce data go through one place
//! (the tool layer) which consults the policy; this module holds no I/O.

pub mod model;
pub mod policy;

pub use model::*;
