//! The accuracy benchmark (`cargo xtask accuracy`, binary `accuracy`): scenarios with ground
//! truth built into the services, and the scoring of received spans against it.

pub mod scenario;
pub mod score;
