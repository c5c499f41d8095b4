//! Outside sources of rules the daemon follows: a CrowdSec local API
//! ([`crowdsec`]), whose ban decisions become blocks of origin `crowdsec`,
//! and the fleet's etcd cluster ([`etcd`]), whose keys become entries of
//! origin `fleet`. Both speak HTTP, over TLS when their URLs are
//! `https://` ([`tls`]).
//!
//! Like the transports in [`crate::server`], this layer reaches the daemon
//! through its [`crate::daemon::Handle`] only, so that what a source brings
//! takes the same path as a change typed by an administrator: checked by
//! the lockout guard, journaled, counted and listed with its origin. Each
//! link reports its state to the handle, and `status` shows it.

mod client;
pub mod crowdsec;
mod decisions;
pub mod etcd;
mod gateway;
mod keys;
mod member;
mod pages;
pub mod publish;
mod settings;
pub mod tls;

pub use client::Login;

use std::time::Duration;

use crate::daemon::Stop;

/// Waits `period`, or until the daemon stops; false if it stops.
async fn pause(stop: &mut Stop, period: Duration) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = stop.changed() => false,
        () = tokio::time::sleep(period) => !*stop.borrow(),
    }
}
