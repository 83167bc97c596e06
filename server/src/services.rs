//! The node's services, in start order: one line each.
//!
//! A service is a folder under `services/` (its routes, calls, log items,
//! view tables and metrics, declared by implementing
//! `crate::service::Service`) and its line here. A service may use the
//! services above it.

use crate::service::Registry;

/// Declares each service's module and adds it to the registry, in order.
macro_rules! services {
    ($($module:ident::$service:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// Every service this build has, in start order.
        pub fn registry() -> Registry {
            let mut registry = Registry::default();
            $(registry.add::<$module::$service>();)*
            registry
        }
    };
}

services! {
    passport::Passport,
    ops::Ops,
    ledger::Ledger,
    wallet::Wallet,
    index::Index,
    rewarder::Rewarder,
    echo::Echo,
}
