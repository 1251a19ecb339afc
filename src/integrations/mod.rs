//! The session store plugged into web frameworks (each behind a cargo feature).
//!
//! - `tower-sessions` ([`tower_sessions`]): axum and any tower stack, through
//!   tower-sessions-core 0.15's `SessionStore` and `ExpiredDeletion`.
//! - `actix-session` ([`actix_session`]): actix-web, through actix-session 0.11's
//!   `SessionStore`.

#[cfg(feature = "actix-session")]
pub mod actix_session;
#[cfg(feature = "tower-sessions")]
pub mod tower_sessions;
