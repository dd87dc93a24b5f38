//! Southbound toward FRR: the vty socket client and parsers of pimd's JSON.

pub mod joins;
pub mod vty;
