//! What the index learns from other nodes: providers found through the DHT
//! (each node found is asked over HTTP for its live records), and manifest
//! bytes fetched from providers with hedging, over the shard's outbound
//! connections.
//!
//! Hedging: `alpha` requests at once; if none has won after
//! `hedge_after_ms`, `beta` more; the first answer whose bytes hash to the
//! cid wins and the others are dropped (the client cancels their
//! operations); an answer that does not match is counted
//! (`index_integrity_fail_total{stage="peer"}`) and the next provider is
//! asked in its place; everything stops at the deadline. Once a hedge was
//! sent, the outcome is counted: `win` (a hedge request won), `lose` (a
//! first-wave request won), `tie` (both had a verified answer at once).

use super::Index;
use super::cache::Listed;
use super::dht::{Command, LookupError};
use crate::http::client::{ClientRequest, ClientResponse};
use crate::limits::INDEX_PROVIDERS_LIMIT_MAX;
use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use ron_proto::http::Method;
use ron_proto::index::Cid;
use simd_json::prelude::*;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Why nothing came back from the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteError {
    /// The deadline passed.
    TimedOut,
    /// Too many lookups in flight.
    Busy,
    /// The DHT client stopped.
    Stopped,
    /// Providers were found, and none served bytes that match the cid.
    NoGoodProvider,
    /// No provider has an address the index can fetch from (`http://` and
    /// an IP address and port, not this node).
    NoCandidates,
}

/// Providers found through the DHT.
#[derive(Debug, Default)]
pub struct Remote {
    pub listed: Vec<Listed>,
    pub hops: u32,
}

/// The live providers of `cid` on other nodes: the nodes the DHT names
/// (this one left out), each asked for its own records by the deadline.
pub async fn remote_providers(index: &Rc<Index>, cid: Cid, deadline: Instant) -> Result<Remote, RemoteError> {
    let core = &index.core;
    let (poster, answer) = core.returns.expect();
    let command = Command::FindProviders { cid, deadline, answer: poster };
    index.shared.dht.send(command).map_err(|error| match error {
        LookupError::Busy => RemoteError::Busy,
        _ => RemoteError::Stopped,
    })?;
    let started = Instant::now();
    let lookup = match answer.await {
        Some(Ok(lookup)) => lookup,
        Some(Err(LookupError::TimedOut)) => {
            index.metrics.borrow_mut().dht_lookups_failed += 1;
            return Err(RemoteError::TimedOut);
        }
        Some(Err(LookupError::Busy)) => return Err(RemoteError::Busy),
        Some(Err(LookupError::Stopped)) | None => return Err(RemoteError::Stopped),
    };
    {
        let mut metrics = index.metrics.borrow_mut();
        metrics.dht_lookup.record(started.elapsed());
        metrics.dht_hops.record(u64::from(lookup.hops));
    }
    let own = index.core.config.advertise_url();
    let path = format!("/providers/{cid}?limit={INDEX_PROVIDERS_LIMIT_MAX}&local=true");
    let mut asks: FuturesUnordered<_> = lookup
        .nodes
        .iter()
        .filter(|url| **url != own)
        .filter_map(|url| address_of(url))
        .map(|addr| get(index, addr, &path, deadline))
        .collect();
    let mut listed: Vec<Listed> = Vec::new();
    loop {
        let next = asks.next();
        let timeout = glommio::timer::sleep(deadline.saturating_duration_since(Instant::now()));
        let answered = match futures::future::select(next, Box::pin(timeout)).await {
            futures::future::Either::Left((Some(answered), _)) => answered,
            futures::future::Either::Left((None, _)) => break,
            futures::future::Either::Right(_) => {
                if listed.is_empty() {
                    return Err(RemoteError::TimedOut);
                }
                break;
            }
        };
        let Some(response) = answered.filter(|r| r.status == 200) else { continue };
        for provider in parse_providers(&response.body) {
            if !listed.iter().any(|p| p.id == provider.id) {
                listed.push(provider);
            }
        }
    }
    if listed.is_empty() && !lookup.nodes.is_empty() && Instant::now() >= deadline {
        return Err(RemoteError::TimedOut);
    }
    listed.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
    Ok(Remote { listed, hops: lookup.hops })
}

/// A GET to a peer by the deadline; `None` if it failed.
fn get(
    index: &Rc<Index>,
    addr: SocketAddr,
    path: &str,
    deadline: Instant,
) -> Pin<Box<dyn Future<Output = Option<ClientResponse>>>> {
    let client = index.client.clone();
    let path = path.to_owned();
    Box::pin(async move {
        let request = ClientRequest { method: Method::Get, path: &path, headers: &[], body: &[] };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match client.request(addr, request, left).await {
            Ok(response) => Some(response),
            Err(error) => {
                tracing::debug!(%addr, %error, "an index peer did not answer");
                None
            }
        }
    })
}

/// The providers of a `/providers` answer (at most the route's limit).
fn parse_providers(body: &[u8]) -> Vec<Listed> {
    let mut body = body.to_vec();
    let Ok(value) = simd_json::to_owned_value(&mut body) else { return Vec::new() };
    let Some(providers) = value.get_array("providers") else { return Vec::new() };
    providers
        .iter()
        .take(INDEX_PROVIDERS_LIMIT_MAX)
        .filter_map(|p| {
            let id = p.get_str("id")?;
            ron_proto::index::valid_node_uri(id).then(|| Listed {
                id: id.to_owned(),
                region: p.get_str("region").map(str::to_owned),
                score: p.get_f64("score").unwrap_or(0.0).clamp(0.0, 1.0) as f32,
            })
        })
        .collect()
}

/// The socket address of an `http://<ip>:<port>[/…]` provider URI (no
/// names: the index resolves nothing through DNS).
pub fn address_of(uri: &str) -> Option<SocketAddr> {
    let rest = uri.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    authority.parse().ok()
}

/// The bytes of `cid` from `providers` (best first), hedged, verified.
pub async fn fetch_object(
    index: &Rc<Index>,
    cid: Cid,
    providers: &[Listed],
    deadline: Instant,
) -> Result<Vec<u8>, RemoteError> {
    let own = index.core.config.advertise_url();
    let candidates = providers
        .iter()
        .filter(|p| p.id != own)
        .filter_map(|p| address_of(&p.id))
        .collect::<Vec<_>>();
    if candidates.is_empty() {
        return Err(RemoteError::NoCandidates);
    }
    let mut candidates = candidates.into_iter();
    let config = &index.core.config.index;
    let path = format!("/v1/index/objects/{cid}?local=true");
    let mut inflight = FuturesUnordered::new();
    let launch = |inflight: &mut FuturesUnordered<_>, addr: SocketAddr, hedge: bool| {
        let answer = get(index, addr, &path, deadline);
        inflight.push(answer.map(move |answer| (hedge, answer)));
    };
    for addr in candidates.by_ref().take(config.alpha as usize) {
        launch(&mut inflight, addr, false);
    }
    let mut hedge_at = Some(Instant::now() + Duration::from_millis(config.hedge_after_ms));
    let mut hedged = false;
    loop {
        // A request given up at the deadline ends the fetch as timed out.
        if Instant::now() >= deadline {
            return Err(RemoteError::TimedOut);
        }
        if inflight.is_empty() {
            let Some(addr) = candidates.next() else { return Err(RemoteError::NoGoodProvider) };
            launch(&mut inflight, addr, hedged);
        }
        let wake_at = hedge_at.map_or(deadline, |at| at.min(deadline));
        let timer = glommio::timer::sleep(wake_at.saturating_duration_since(Instant::now()));
        match futures::future::select(inflight.next(), Box::pin(timer)).await {
            futures::future::Either::Left((Some((hedge, answer)), _)) => {
                match verified(index, &cid, answer) {
                    Some(bytes) => {
                        if hedged {
                            let tie = inflight.next().now_or_never().flatten().is_some_and(
                                |(other, answer)| other != hedge && verified(index, &cid, answer).is_some(),
                            );
                            let mut metrics = index.metrics.borrow_mut();
                            match (tie, hedge) {
                                (true, _) => metrics.hedge_tie += 1,
                                (false, true) => metrics.hedge_win += 1,
                                (false, false) => metrics.hedge_lose += 1,
                            }
                        }
                        return Ok(bytes);
                    }
                    None => {
                        // In its place, the next provider.
                        if let Some(addr) = candidates.next() {
                            launch(&mut inflight, addr, hedge);
                        }
                    }
                }
            }
            futures::future::Either::Left((None, _)) => {}
            futures::future::Either::Right(_) => {
                hedge_at = None;
                for addr in candidates.by_ref().take(config.beta as usize) {
                    launch(&mut inflight, addr, true);
                    hedged = true;
                }
            }
        }
    }
}

/// The body of a peer's answer if it is the object: counted when bytes
/// came that do not hash to the cid.
fn verified(index: &Rc<Index>, cid: &Cid, answer: Option<ClientResponse>) -> Option<Vec<u8>> {
    let response = answer.filter(|r| r.status == 200)?;
    if Cid::of(&response.body) == *cid {
        return Some(response.body);
    }
    index.metrics.borrow_mut().integrity_fail_peer += 1;
    tracing::warn!(%cid, "a peer served bytes that do not match the cid: refused");
    None
}
