//! HTTP/1.1 on the shard's own socket ring: the front (connections,
//! decoding with the limits of SPEC §3, answers in request order), the
//! route table with the dispatch step, replies, and outbound connections
//! to peers (`client`).
//!
//! Architecture invariant: http knows no service. Services add routes to
//! the table; a service that checks tokens installs itself as the table's
//! gate.

pub mod client;
pub mod front;
pub mod reply;
pub mod routes;
pub mod socket_ring;

pub use reply::{Handled, Reply};
pub use routes::{Access, Amount, Params, Request, RouteTable, Shed};
