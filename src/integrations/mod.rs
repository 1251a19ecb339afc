//! The session store plugged into web frameworks (each behind a cargo feature).
//!
//! - `tower-sessions` ([`tower_sessions`]): axum and any tower stack, through
//!   tower-sessions-core 0.15's `SessionStore` and `ExpiredDeletion`.
//! - `actix-session` ([`actix_session`]): actix-web, through actix-session 0.11's
//!   `SessionStore`.
//! - `redis` ([`redis`]): sessions kept in Redis, shared by every server of an app; with
//!   `tower-sessions` too, its `SessionStore` and a two-tier store (an in-memory near cache in
//!   front of Redis, with a staleness bound).

#[cfg(feature = "actix-session")]
pub mod actix_session;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "tower-sessions")]
pub mod tower_sessions;
