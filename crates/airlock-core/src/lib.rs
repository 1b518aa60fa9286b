//! The enforcement core: identity, policy, approvals, recording. Every protocol adapter turns
//! wire traffic into an [`operation::Operation`] and asks the [`gate::Gate`] for a verdict.

pub mod approval;
pub mod chain;
pub mod checkpoint;
pub mod classify;
pub mod classify_mysql;
pub mod config;
pub mod functions;
pub mod gate;
pub mod identity;
pub mod mask;
pub mod notify;
pub mod oidc;
pub mod operation;
pub mod policy;
pub mod preview;
pub mod recorder;
pub mod response;
pub mod sealer;
pub mod secret;
pub mod shape;
pub mod store;
pub mod tls;
pub mod upkeep;
