//! The index's routes (SPEC §7), on the original's paths, bodies, status
//! codes and envelopes: svc-index's `{code, message}` under `/v1/index`,
//! `/resolve` and `/providers`; svc-dht's `{error}` under `/dht`.

use super::cache::{Answer as Found, CacheKey, Listed, stamp};
use super::objects::{PutError, Read};
use super::fetch::{self, RemoteError};
use super::{Answer, Call, Index};
use crate::clock::unix_now_ms;
use crate::http::reply::{Body, ContentType, degraded, link_failure, mesh_failure};
use crate::http::{Access, Handled, Params, Reply, Request, RouteTable, Shed};
use crate::limits::{INDEX_ANSWER_MAX_AGE, INDEX_PROVIDERS_LIMIT_MAX};
use crate::log::{Append, LogAnswer, LogCall};
use crate::service::Service;
use crate::workers::Lane;
use ron_proto::ErrorCode;
use ron_proto::error::ErrorStyle;
use ron_proto::http::Method;
use ron_proto::index::{
    AssetKind, AssetPointer, Cid, IndexItem, Key, Owners, POINTER_VERSION, ProviderRecord,
    PutAsset, PutSite, Route, SitePointer, normalize_name, normalize_updated_at, valid_node_uri,
};
use ron_proto::token::scope::{INDEX_READ, INDEX_WRITE};
use serde::Serialize;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Adds the index's routes.
pub fn add(index: &Rc<Index>, table: &mut RouteTable) {
    let read = if index.core.config.index.public_reads {
        Access::Public
    } else {
        Access::Scope(INDEX_READ)
    };
    let write = Access::Scope(INDEX_WRITE);
    let (i, ix, dht) = (index, ErrorStyle::Index, ErrorStyle::Dht);
    let sites = "/v1/index/sites/{name}/manifest";
    let assets = "/v1/index/assets/{asset_cid}/manifest";
    table.add(i, Method::Put, sites, write, Shed::Yes, put_site).errors(ix);
    table.add(i, Method::Get, sites, read, Shed::Yes, get_site).errors(ix);
    table.add(i, Method::Put, assets, write, Shed::Yes, put_asset).errors(ix);
    table.add(i, Method::Get, assets, read, Shed::Yes, get_asset).errors(ix);
    table.add(i, Method::Put, "/v1/index/objects", write, Shed::Yes, put_object).errors(ix);
    table.add(i, Method::Get, "/v1/index/objects/{cid}", read, Shed::Yes, get_object).errors(ix);
    table.add(i, Method::Post, "/v1/index/provide", write, Shed::Yes, provide).errors(ix);
    table.add(i, Method::Get, "/resolve/{key}", read, Shed::Yes, resolve).errors(ix);
    table.add(i, Method::Get, "/providers/{cid}", read, Shed::Yes, providers).errors(ix);
    table.add(i, Method::Post, "/dht/provide", write, Shed::Yes, provide).errors(dht);
    let find = "/dht/find_providers/{cid}";
    table.add(i, Method::Get, find, read, Shed::Yes, find_providers).errors(dht);
    table.add(i, Method::Get, "/v1/index/dht", read, Shed::No, dht_status).errors(ix);
}

/// `GET /v1/index/dht`: this node's DHT identity and what it sees.
fn dht_status(index: &Rc<Index>, _: &Request<'_>, _: &Params<'_>) -> Handled {
    use std::sync::atomic::Ordering::Relaxed;
    let status = &index.shared.dht.status;
    #[derive(Serialize)]
    struct Status<'a> {
        peer_id: &'a str,
        listen: &'a [String],
        url: String,
        routing_peers: u64,
        connected: u64,
        provided: u64,
        ready: bool,
    }
    let peer_id = status.peer_id.lock().expect("not poisoned").clone();
    let listen = status.listen_addrs.lock().expect("not poisoned").clone();
    let body = Status {
        peer_id: &peer_id,
        listen: &listen,
        url: index.core.config.advertise_url(),
        routing_peers: status.routing_peers.load(Relaxed),
        connected: status.connected.load(Relaxed),
        provided: status.provided.load(Relaxed),
        ready: index.shared.dht.not_ready().is_none(),
    };
    Handled::Now(Reply::json_owned(200, simd_json::to_vec(&body).expect("serializing")))
}

fn bad(message: impl Into<std::borrow::Cow<'static, str>>) -> Reply {
    Reply::error(ErrorCode::BadRequest, message)
}

fn not_found() -> Reply {
    Reply::error(ErrorCode::NotFound, "Not found")
}

/// Returns the reply from the enclosing handler when `$checked` is an error.
macro_rules! check {
    ($checked:expr) => {
        match $checked {
            Ok(value) => value,
            Err(message) => return Handled::Now(bad(message)),
        }
    };
}

/// A stored pointer as the original answers it (nulls written out).
#[derive(Serialize)]
struct PointerRecord<'a> {
    version: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    asset_cid: Option<Cid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    asset_kind: Option<&'static str>,
    manifest_cid: Cid,
    owner_passport_subject: Option<&'a str>,
    owner_wallet_account: Option<&'a str>,
    updated_at_ms: u64,
}

fn site_record(status: u16, site: &SitePointer) -> Reply {
    let record = PointerRecord {
        version: POINTER_VERSION,
        name: Some(&site.name),
        asset_cid: None,
        asset_kind: None,
        manifest_cid: site.manifest,
        owner_passport_subject: site.owners.passport_subject.as_deref(),
        owner_wallet_account: site.owners.wallet_account.as_deref(),
        updated_at_ms: site.updated_at_ms,
    };
    Reply::json_owned(status, simd_json::to_vec(&record).expect("serializing"))
}

fn asset_record(status: u16, asset: &AssetPointer) -> Reply {
    let record = PointerRecord {
        version: POINTER_VERSION,
        name: None,
        asset_cid: Some(asset.asset),
        asset_kind: Some(asset.kind.as_str()),
        manifest_cid: asset.manifest,
        owner_passport_subject: asset.owners.passport_subject.as_deref(),
        owner_wallet_account: asset.owners.wallet_account.as_deref(),
        updated_at_ms: asset.updated_at_ms,
    };
    Reply::json_owned(status, simd_json::to_vec(&record).expect("serializing"))
}

/// Commits an index item (every shard hears of it: their caches learn
/// what is stale) and answers with `answer` once it is applied.
fn commit(index: &Rc<Index>, item: IndexItem, answer: impl FnOnce(&IndexItem) -> Reply + 'static) -> Handled {
    let append = Append::item(|out| item.encode(out), 0..index.core.count);
    let index = index.clone();
    Handled::Later(Box::pin(async move {
        match index.core.log.call(LogCall::Append(append)).await {
            Ok(LogAnswer::Appended { .. }) => answer(&item),
            Ok(LogAnswer::Degraded { reason }) => degraded(Some(&reason)),
            Ok(other) => panic!("an index append answered with {other:?}"),
            Err(error) => link_failure(error),
        }
    }))
}

/// `PUT /v1/index/sites/{name}/manifest`: 202 and the stored record.
fn put_site(index: &Rc<Index>, request: &Request<'_>, params: &Params<'_>) -> Handled {
    let body: PutSite = match request.json_shaped() {
        Ok(body) => body,
        Err(reply) => return Handled::Now(reply),
    };
    let name = check!(normalize_name(&params.decoded(0).unwrap_or_default()));
    let manifest = check!(Cid::normalize(&body.manifest_cid));
    let subject = body.owner_passport_subject.as_deref();
    let owners = check!(Owners::normalize(subject, body.owner_wallet_account.as_deref()));
    let updated_at_ms = check!(normalize_updated_at(body.updated_at_ms, unix_now_ms()));
    let site = SitePointer { name, manifest, owners, updated_at_ms };
    commit(index, IndexItem::Site(site), |item| match item {
        IndexItem::Site(site) => site_record(202, site),
        _ => unreachable!("a site was committed"),
    })
}

/// `PUT /v1/index/assets/{asset_cid}/manifest`: 202 and the stored record.
fn put_asset(index: &Rc<Index>, request: &Request<'_>, params: &Params<'_>) -> Handled {
    let body: PutAsset = match request.json_shaped() {
        Ok(body) => body,
        Err(reply) => return Handled::Now(reply),
    };
    let asset = check!(Cid::normalize(&params.decoded(0).unwrap_or_default()));
    let kind = check!(AssetKind::normalize(&body.asset_kind));
    let manifest = check!(Cid::normalize(&body.manifest_cid));
    let subject = body.owner_passport_subject.as_deref();
    let owners = check!(Owners::normalize(subject, body.owner_wallet_account.as_deref()));
    let updated_at_ms = check!(normalize_updated_at(body.updated_at_ms, unix_now_ms()));
    let pointer = AssetPointer { asset, kind, manifest, owners, updated_at_ms };
    commit(index, IndexItem::Asset(pointer), |item| match item {
        IndexItem::Asset(asset) => asset_record(202, asset),
        _ => unreachable!("an asset was committed"),
    })
}

/// Calls the owner of a key; a mesh failure becomes the reply.
async fn ask(index: &Rc<Index>, route: Route<'_>, call: Call) -> Result<Answer, Reply> {
    index.call(index.owner(route), call).await.map_err(mesh_failure)
}

fn get_site(index: &Rc<Index>, _: &Request<'_>, params: &Params<'_>) -> Handled {
    let name = check!(normalize_name(&params.decoded(0).unwrap_or_default()));
    let index = index.clone();
    Handled::Later(Box::pin(async move {
        match ask(&index, Route::Name(&name), Call::Site { name: name.clone() }).await {
            Ok(Answer::Site(Some(site))) => site_record(200, &site),
            Ok(Answer::Site(None)) => not_found(),
            Ok(other) => panic!("a site lookup answered with {other:?}"),
            Err(reply) => reply,
        }
    }))
}

fn get_asset(index: &Rc<Index>, _: &Request<'_>, params: &Params<'_>) -> Handled {
    let cid = check!(Cid::normalize(&params.decoded(0).unwrap_or_default()));
    let index = index.clone();
    Handled::Later(Box::pin(async move {
        match ask(&index, Route::Cid(&cid), Call::Asset { cid }).await {
            Ok(Answer::Asset(Some(asset))) => asset_record(200, &asset),
            Ok(Answer::Asset(None)) => not_found(),
            Ok(other) => panic!("an asset lookup answered with {other:?}"),
            Err(reply) => reply,
        }
    }))
}

/// `POST /dht/provide` and `/v1/index/provide` `{cid, node, ttl_secs?}`:
/// `{"ok":true,"ttl_secs_used":N}` once the record is durable.
fn provide(index: &Rc<Index>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let body: ron_proto::index::Provide = match request.json_shaped() {
        Ok(body) => body,
        Err(reply) => return Handled::Now(reply),
    };
    let Some(cid) = Cid::parse(&body.cid) else {
        return Handled::Now(bad("cid must be b3: and 64 lowercase hex digits"));
    };
    if !valid_node_uri(&body.node) {
        return Handled::Now(bad("invalid node URI"));
    }
    let config = &index.core.config.index;
    let ttl_s = match body.ttl_secs {
        Some(0) => return Handled::Now(bad("ttl_secs must be greater than zero")),
        Some(ttl) => ttl.min(config.provider_ttl_max_s),
        None => config.provider_ttl_default_s,
    };
    let expires_ms = unix_now_ms().saturating_add(ttl_s * 1000);
    let node = body.node.trim().to_owned();
    let record = ProviderRecord { cid, node, ttl_s: ttl_s as u32, expires_ms };
    commit(index, IndexItem::Provider(record), move |_| {
        let body = format!("{{\"ok\":true,\"ttl_secs_used\":{ttl_s}}}");
        Reply::json_owned(200, body.into_bytes())
    })
}

/// What a resolve found, made afresh: the key's manifest (a name's site
/// pointer; a cid's asset pointer, else the cid itself) and its live
/// providers, from this node's records or else through the DHT (then with
/// the manifest fetched and verified); cached on this shard.
async fn resolve_afresh(index: &Rc<Index>, key: &Key, deadline: Instant) -> Result<Rc<Found>, Reply> {
    let stamp_key = stamp(&index.generations.borrow(), [Some(key.route()), None]);
    let manifest = match key {
        Key::Name(name) => match ask(index, key.route(), Call::Site { name: name.clone() }).await? {
            Answer::Site(site) => site.map(|site| site.manifest),
            other => panic!("a site lookup answered with {other:?}"),
        },
        Key::Cid(cid) => match ask(index, key.route(), Call::Asset { cid: *cid }).await? {
            Answer::Asset(asset) => Some(asset.map_or(*cid, |asset| asset.manifest)),
            other => panic!("an asset lookup answered with {other:?}"),
        },
    };
    let (found, until, stamp_manifest) = match manifest {
        Some(manifest) => {
            let stamp = stamp(&index.generations.borrow(), [Some(Route::Cid(&manifest)), None]);
            let found = providers_anywhere(index, &manifest, deadline, false).await?;
            if found.remote && !found.listed.is_empty() {
                match keep_manifest(index, manifest, &found.listed, deadline).await {
                    // Nobody to fetch from (providers named by other URIs):
                    // answered as found, unverified.
                    Ok(_) | Err(RemoteError::NoCandidates) => {}
                    Err(error) => return Err(remote_failure(error)),
                }
            }
            (Found::new(Some(manifest), found.listed), found.until, stamp[0])
        }
        None => (Found::new(None, Vec::new()), None, None),
    };
    let found = Rc::new(found);
    let stamps = [stamp_key[0], stamp_manifest];
    let now = Instant::now();
    index.cache.borrow_mut().put(CacheKey::resolve(key), found.clone(), stamps, now, until);
    Ok(found)
}

/// Providers of a cid and where they came from.
struct Providers {
    listed: Vec<Listed>,
    /// When the first of them expires (local records), if known.
    until: Option<Instant>,
    /// Found through the DHT.
    remote: bool,
    hops: u32,
}

/// The live providers of `cid`: this node's records, else (unless
/// `local_only`) those of the nodes the DHT names.
async fn providers_anywhere(
    index: &Rc<Index>,
    cid: &Cid,
    deadline: Instant,
    local_only: bool,
) -> Result<Providers, Reply> {
    let (listed, until) = live_providers(index, cid).await?;
    if !listed.is_empty() || local_only {
        return Ok(Providers { listed, until, remote: false, hops: 0 });
    }
    let remote = fetch::remote_providers(index, *cid, deadline).await.map_err(remote_failure)?;
    Ok(Providers { listed: remote.listed, until: None, remote: true, hops: remote.hops })
}

/// Makes sure this node keeps the bytes of `manifest`: read locally, else
/// fetched from `providers` (hedged, verified) and kept.
async fn keep_manifest(
    index: &Rc<Index>,
    manifest: Cid,
    providers: &[Listed],
    deadline: Instant,
) -> Result<Vec<u8>, RemoteError> {
    if let Ok(Some(bytes)) = read_local(index, manifest).await {
        return Ok(bytes);
    }
    let bytes = fetch::fetch_object(index, manifest, providers, deadline).await?;
    let shared = index.shared.clone();
    let copy = bytes.clone();
    let store = move || {
        if let Err(error) = shared.objects.put(&manifest, &copy) {
            tracing::warn!(%error, "a fetched manifest was not kept");
        }
    };
    // Kept in the background: the answer does not wait for the disk.
    let core = &index.core;
    if core.returns.run(&core.workers, Lane::Normal, store).is_err() {
        tracing::warn!("the workers are full: a fetched manifest was not kept");
    }
    Ok(bytes)
}

/// The bytes of `cid` in this node's store, checked; `None` if missing
/// (or corrupt, then counted).
async fn read_local(index: &Rc<Index>, cid: Cid) -> Result<Option<Vec<u8>>, Reply> {
    let shared = index.shared.clone();
    let core = &index.core;
    let Ok(read) = core.returns.run(&core.workers, Lane::Normal, move || shared.objects.get(&cid))
    else {
        return Err(workers_full());
    };
    match read.await {
        Some(Ok(Read::Found(bytes))) => Ok(Some(bytes)),
        Some(Ok(Read::Corrupt)) => {
            index.metrics.borrow_mut().integrity_fail_disk += 1;
            Ok(None)
        }
        Some(Ok(Read::Missing)) => Ok(None),
        Some(Err(error)) => {
            tracing::error!(%error, "reading an index object");
            Err(Reply::error(ErrorCode::Internal, "Internal error"))
        }
        None => Err(Reply::error(ErrorCode::Unavailable, "the shard stopped")),
    }
}

/// The answer when the network did not give one.
fn remote_failure(error: RemoteError) -> Reply {
    match error {
        RemoteError::TimedOut => Reply::error(ErrorCode::Timeout, "lookup failed or timed out"),
        RemoteError::Busy => workers_full(),
        RemoteError::Stopped => Reply::error(ErrorCode::Unavailable, "Upstream not ready"),
        RemoteError::NoGoodProvider => {
            Reply::error(ErrorCode::Unavailable, "no provider served bytes that match the cid")
        }
        RemoteError::NoCandidates => Reply::error(ErrorCode::NotFound, "Not found"),
    }
}

/// The live providers of `cid` from its owner, as answers list them, and
/// when the first of them expires.
async fn live_providers(index: &Rc<Index>, cid: &Cid) -> Result<(Vec<Listed>, Option<Instant>), Reply> {
    let providers = match ask(index, Route::Cid(cid), Call::Providers { cid: *cid }).await? {
        Answer::Providers(providers) => providers,
        other => panic!("a providers lookup answered with {other:?}"),
    };
    let now_ms = unix_now_ms();
    let first_expiry = providers.iter().map(|p| p.expires_ms).min();
    let until = first_expiry.map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(now_ms)));
    let listed = providers
        .into_iter()
        .map(|p| Listed { score: p.score(now_ms), id: p.node, region: None })
        .collect();
    Ok((listed, until))
}

/// Whether the request keeps to this node (`?local=true`: what peers ask
/// each other, so a lookup never recurses).
fn local_only(request: &Request<'_>) -> Result<bool, Reply> {
    Ok(request.query("local")?.is_some_and(|value| value == "true" || value == "1"))
}

/// Whether the request asks to bypass the cache (`?fresh=true`).
fn fresh(request: &Request<'_>) -> Result<bool, Reply> {
    Ok(request.query("fresh")?.is_some_and(|value| value == "true" || value == "1"))
}

/// `GET /resolve/{key}`: `{key, manifest, providers, etag, cached}`; 404
/// with the same body when nothing is known.
fn resolve(index: &Rc<Index>, request: &Request<'_>, params: &Params<'_>) -> Handled {
    let started = Instant::now();
    let key = check!(Key::parse(&params.decoded(0).unwrap_or_default()));
    let fresh = match fresh(request) {
        Ok(fresh) => fresh,
        Err(reply) => return Handled::Now(reply),
    };
    let cache_key = CacheKey::resolve(&key);
    if !fresh {
        let hit = index.cache.borrow_mut().get(&cache_key, &index.generations.borrow(), started);
        if let Some(found) = hit {
            let mut reply = resolve_reply(&key, &found, true);
            finish(&mut reply, &found.etag, request.head.if_none_match.map(|s| s.of(request.raw)));
            index.record_resolve(&key, started);
            return Handled::Now(reply);
        }
    } else {
        index.cache.borrow_mut().misses += 1;
    }
    let deadline = started + Duration::from_millis(index.core.config.index.deadline_ms);
    let index = index.clone();
    let if_none_match = request.head.if_none_match.map(|span| span.of(request.raw).to_vec());
    Handled::Later(Box::pin(async move {
        let found = match resolve_afresh(&index, &key, deadline).await {
            Ok(found) => found,
            Err(reply) => return reply,
        };
        index.record_resolve(&key, started);
        let mut reply = resolve_reply(&key, &found, false);
        finish(&mut reply, &found.etag, if_none_match.as_deref());
        reply
    }))
}

impl Index {
    fn record_resolve(&self, key: &Key, started: Instant) {
        let mut metrics = self.metrics.borrow_mut();
        match key {
            Key::Name(_) => metrics.resolve_name.record(started.elapsed()),
            Key::Cid(_) => metrics.resolve_cid.record(started.elapsed()),
        }
    }
}

#[derive(Serialize)]
struct ResolveBody<'a> {
    key: &'a str,
    manifest: Option<Cid>,
    providers: &'a [Listed],
    etag: Cid,
    cached: bool,
}

fn resolve_reply(key: &Key, found: &Found, cached: bool) -> Reply {
    let mut text = String::with_capacity(300);
    key.write(&mut text);
    let body = ResolveBody {
        key: &text,
        manifest: found.manifest,
        providers: &found.providers,
        etag: found.etag,
        cached,
    };
    let status = if found.is_miss() { 404 } else { 200 };
    Reply::json_owned(status, simd_json::to_vec(&body).expect("serializing"))
}

/// Adds the ETag and cache headers to an answer made later; a current
/// `If-None-Match` makes it a 304.
fn finish(reply: &mut Reply, etag: &Cid, if_none_match: Option<&[u8]>) {
    let etag = quoted(etag);
    if crate::http::routes::etag_current(if_none_match, etag.as_bytes()) {
        *reply = not_modified();
    }
    reply.add_header("ETag", etag);
    reply.add_header("Cache-Control", INDEX_ANSWER_MAX_AGE.to_owned());
}

fn quoted(etag: &Cid) -> String {
    format!("\"{etag}\"")
}

fn not_modified() -> Reply {
    Reply::new(304, ContentType::Json, Body::Empty)
}

/// `GET /providers/{cid}?limit=N`: `{cid, providers, truncated, etag}`,
/// best first; 404 with the same body when there are none.
fn providers(index: &Rc<Index>, request: &Request<'_>, params: &Params<'_>) -> Handled {
    let Some(cid) = params.decoded(0).as_deref().and_then(Cid::parse) else {
        return Handled::Now(bad("invalid cid"));
    };
    let limit = match request.query("limit") {
        Ok(limit) => limit.and_then(|l| l.parse::<usize>().ok()).unwrap_or(5),
        Err(reply) => return Handled::Now(reply),
    };
    let limit = limit.clamp(1, INDEX_PROVIDERS_LIMIT_MAX);
    let (fresh, local) = match (fresh(request), local_only(request)) {
        (Ok(fresh), Ok(local)) => (fresh, local),
        (Err(reply), _) | (_, Err(reply)) => return Handled::Now(reply),
    };
    let now = Instant::now();
    let deadline = now + Duration::from_millis(index.core.config.index.deadline_ms);
    // Peers asking for this node's own records bypass the cache, which
    // may hold answers from the DHT.
    let fresh = fresh || local;
    let cache_key = CacheKey::providers(&cid);
    if !fresh {
        let hit = index.cache.borrow_mut().get(&cache_key, &index.generations.borrow(), now);
        if let Some(found) = hit {
            let (mut reply, etag) = providers_reply(&cid, &found, limit);
            finish(&mut reply, &etag, request.head.if_none_match.map(|s| s.of(request.raw)));
            return Handled::Now(reply);
        }
    } else {
        index.cache.borrow_mut().misses += 1;
    }
    let index = index.clone();
    let if_none_match = request.head.if_none_match.map(|span| span.of(request.raw).to_vec());
    Handled::Later(Box::pin(async move {
        let stamps = stamp(&index.generations.borrow(), [Some(Route::Cid(&cid)), None]);
        let found = match providers_anywhere(&index, &cid, deadline, local).await {
            Ok(found) => found,
            Err(reply) => return reply,
        };
        let until = found.until;
        let found = Rc::new(Found::new(None, found.listed));
        if !local {
            let now = Instant::now();
            index.cache.borrow_mut().put(cache_key, found.clone(), stamps, now, until);
        }
        let (mut reply, etag) = providers_reply(&cid, &found, limit);
        finish(&mut reply, &etag, if_none_match.as_deref());
        reply
    }))
}

#[derive(Serialize)]
struct ProvidersBody<'a> {
    cid: Cid,
    providers: &'a [Listed],
    truncated: bool,
    etag: Cid,
}

/// The providers answer cut to `limit`, and its ETag (of what it lists).
fn providers_reply(cid: &Cid, found: &Found, limit: usize) -> (Reply, Cid) {
    let truncated = found.providers.len() > limit;
    let listed = &found.providers[..found.providers.len().min(limit)];
    let etag = if truncated {
        ron_proto::index::etag(None, listed.iter().map(|p| p.id.as_str()))
    } else {
        found.etag
    };
    let body = ProvidersBody { cid: *cid, providers: listed, truncated, etag };
    let status = if listed.is_empty() { 404 } else { 200 };
    (Reply::json_owned(status, simd_json::to_vec(&body).expect("serializing")), etag)
}

/// `GET /dht/find_providers/{cid}`: `{cid, elapsed_ms, hops, providers}`
/// (the node URIs: this node's records, else the DHT's), svc-dht's keys
/// in its order; 504 `{"error"}` at the deadline.
fn find_providers(index: &Rc<Index>, request: &Request<'_>, params: &Params<'_>) -> Handled {
    let Some(cid) = params.decoded(0).as_deref().and_then(Cid::parse) else {
        return Handled::Now(bad("cid must be b3: and 64 lowercase hex digits"));
    };
    let local = match local_only(request) {
        Ok(local) => local,
        Err(reply) => return Handled::Now(reply),
    };
    let started = Instant::now();
    let deadline = started + Duration::from_millis(index.core.config.index.deadline_ms);
    let index = index.clone();
    Handled::Later(Box::pin(async move {
        let found = match providers_anywhere(&index, &cid, deadline, local).await {
            Ok(found) => found,
            Err(reply) => return reply,
        };
        #[derive(Serialize)]
        struct FindBody {
            cid: Cid,
            elapsed_ms: u64,
            hops: u32,
            providers: Vec<String>,
        }
        let body = FindBody {
            cid,
            elapsed_ms: started.elapsed().as_millis() as u64,
            hops: found.hops,
            providers: found.listed.into_iter().map(|p| p.id).collect(),
        };
        Reply::json_owned(200, simd_json::to_vec(&body).expect("serializing"))
    }))
}

/// `PUT /v1/index/objects`: keeps the body under its cid (hashed and
/// written on a worker, synced before the answer) → `{"cid"}`.
fn put_object(index: &Rc<Index>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    if request.body.is_empty() {
        return Handled::Now(bad("an object needs a body"));
    }
    let bytes = request.body.to_vec();
    let shared = index.shared.clone();
    let work = move || {
        let cid = Cid::of(&bytes);
        shared.objects.put(&cid, &bytes).map(|()| cid)
    };
    let core = &index.core;
    let Ok(stored) = core.returns.run(&core.workers, Lane::Normal, work) else {
        return Handled::Now(workers_full());
    };
    Handled::Later(Box::pin(async move {
        match stored.await {
            Some(Ok(cid)) => Reply::json_owned(200, format!("{{\"cid\":\"{cid}\"}}").into_bytes()),
            Some(Err(PutError::Full)) => Reply::error(ErrorCode::LimitsExceeded, PutError::Full.to_string()),
            Some(Err(error)) => {
                tracing::error!(%error, "an index object was not stored");
                Reply::error(ErrorCode::Internal, "Internal error")
            }
            None => Reply::error(ErrorCode::Unavailable, "the shard stopped"),
        }
    }))
}

fn workers_full() -> Reply {
    let mut reply = Reply::error(ErrorCode::Busy, "Over capacity");
    reply.retry_after_s = Some(1);
    reply
}

/// `GET /v1/index/objects/{cid}`: the bytes, checked against the cid;
/// not kept here, they are fetched from the cid's providers (unless
/// `?local=true`) and kept.
fn get_object(index: &Rc<Index>, request: &Request<'_>, params: &Params<'_>) -> Handled {
    let cid = check!(Cid::normalize(&params.decoded(0).unwrap_or_default()));
    let local = match local_only(request) {
        Ok(local) => local,
        Err(reply) => return Handled::Now(reply),
    };
    let deadline = Instant::now() + Duration::from_millis(index.core.config.index.deadline_ms);
    let index = index.clone();
    Handled::Later(Box::pin(async move {
        let bytes = match read_local(&index, cid).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) if local => return not_found(),
            Ok(None) => {
                let found = match providers_anywhere(&index, &cid, deadline, false).await {
                    Ok(found) if found.listed.is_empty() => return not_found(),
                    Ok(found) => found,
                    Err(reply) => return reply,
                };
                match keep_manifest(&index, cid, &found.listed, deadline).await {
                    Ok(bytes) => bytes,
                    Err(RemoteError::NoCandidates) => return not_found(),
                    Err(error) => return remote_failure(error),
                }
            }
            Err(reply) => return reply,
        };
        let mut reply = Reply::new(200, ContentType::Binary, Body::Owned(bytes));
        reply.add_header("ETag", quoted(&cid));
        reply.add_header("Cache-Control", "public, max-age=31536000, immutable".to_owned());
        reply
    }))
}
