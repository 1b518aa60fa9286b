//! The enforcement core: identity, policy, approvals, recording. Every protocol adapter turns
//! wire traffic into an [`operation::Operation`] and asks the [`gate::Gate`] for a verdict.

pub mod store;
