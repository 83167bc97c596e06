//! The index's DHT at scale, in one process (issue 12): `--nodes` swarms
//! running ron-node's own behaviour (`services::index::dht::behaviour`:
//! Kademlia with its protocol, parallelism and store bounds, and identify,
//! whose listen addresses fill the routing tables as in the node) over
//! libp2p's memory transport with Yamux (plaintext instead of Noise: the
//! handshakes' curves would dominate the run and say nothing of routing).
//! Once every node has finished its first bootstrap (Kademlia starts one by
//! itself), `--cids` cids are provided by random nodes (`start_providing`),
//! then `--lookups` lookups run from random nodes (`get_providers`).
//!
//! Reported:
//! * the real queries: found or not, requests sent, time to the first
//!   provider;
//! * hops: the same lookups replayed round by round over the real routing
//!   tables and provider stores, snapshotted after the queries: each round
//!   asks the `alpha` closest not yet asked, a node holding a provider
//!   record ends the lookup (hops = rounds; 0 when the asking node holds
//!   one);
//! * with `--model`, only the hop replay, over converged tables built
//!   without swarms and provider records placed on the k nodes closest to
//!   each key: for sizes (10 000) past what one process holds as libp2p
//!   nodes; at sizes both reach, the two agree or the model is wrong;
//! * hedging: a model of the fetch policy of `services::index::fetch`
//!   (alpha at once, beta after `hedge_after`, first answer wins) over
//!   providers whose latencies have a slow tail, with the outcome counted
//!   as the node counts it (win, lose, tie).
//!
//!   cargo run --release -p ron-server --example dht_sim -- --nodes 1000

use clap::Parser;
use libp2p::core::Transport as _;
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade::Version;
use libp2p::futures::StreamExt as _;
use libp2p::kad::store::RecordStore as _;
use libp2p::kad::{self, GetProvidersOk, KBucketKey, QueryResult, RecordKey};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, yamux};
use ron_server::services::index::dht::{
    Behaviour, BehaviourEvent, Settings, behaviour, route_identified,
};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    #[arg(long, default_value_t = 200)]
    cids: usize,
    #[arg(long, default_value_t = 500)]
    lookups: usize,
    /// How the routing tables are filled: `converged` (each node's table
    /// given up to k random peers per bucket, as a settled Kademlia holds;
    /// quick for thousands of nodes) or `bootstrap` (each node adds a few
    /// earlier nodes and runs Kademlia's bootstrap; slow past a few hundred).
    #[arg(long, default_value = "converged")]
    fill: String,
    /// `bootstrap`: peers each node starts from (earlier nodes, at random).
    #[arg(long, default_value_t = 3)]
    bootstrap_peers: usize,
    /// `bootstrap`: nodes started (and bootstrapping) at once.
    #[arg(long, default_value_t = 64)]
    bootstrap_batch: usize,
    #[arg(long, default_value_t = 3)]
    alpha: usize,
    /// Lookups in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrent: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Hedging model: fetches, providers per fetch, share of slow
    /// providers, and the policy.
    #[arg(long, default_value_t = 100_000)]
    fetches: usize,
    #[arg(long, default_value_t = 5)]
    providers: usize,
    #[arg(long, default_value_t = 0.1)]
    slow_share: f64,
    #[arg(long, default_value_t = 2)]
    beta: usize,
    #[arg(long, default_value_t = 150)]
    hedge_after_ms: u64,
    /// Only the model: converged tables and lookups replayed over them,
    /// no libp2p nodes (for sizes past what one process holds as swarms).
    #[arg(long)]
    model: bool,
}

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

enum Command {
    Provide(RecordKey, oneshot::Sender<bool>),
    Find(RecordKey, oneshot::Sender<Found>),
    Snapshot(Vec<RecordKey>, oneshot::Sender<Snapshot>),
}

#[derive(Debug, Default)]
struct Found {
    found: bool,
    requests: u32,
    elapsed: Duration,
}

/// A node's routing table and which of the keys it holds providers for.
struct Snapshot {
    table: Vec<PeerId>,
    holds: Vec<bool>,
}

type Swarm = libp2p::Swarm<Behaviour>;

/// Connections unused this long close (a node keeps its peers in its table,
/// not connected: thousands of open connections per process would measure
/// memory, not routing).
const IDLE_CONNECTION: Duration = Duration::from_secs(5);

fn build(settings: Settings) -> anyhow::Result<Swarm> {
    let swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            MemoryTransport::default()
                .upgrade(Version::V1)
                .authenticate(libp2p::plaintext::Config::new(key))
                .multiplex(yamux::Config::default())
        })?
        .with_behaviour(|key| behaviour(key, &settings, "http://127.0.0.1:1"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION))
        .build();
    Ok(swarm)
}

/// One node's event loop.
/// `settled` is told how the node's first bootstrap ended: Kademlia starts
/// one by itself once the node listens and peers enter its table.
async fn run(
    mut swarm: Swarm,
    mut commands: mpsc::Receiver<Command>,
    settled: oneshot::Sender<bool>,
) {
    // A node that knows nobody has nothing to bootstrap from.
    let alone = swarm.behaviour_mut().kad.kbuckets().all(|b| b.num_entries() == 0);
    let mut settled = (!alone).then_some(settled);
    let mut done: HashMap<kad::QueryId, oneshot::Sender<bool>> = HashMap::new();
    let mut finds: HashMap<kad::QueryId, (oneshot::Sender<Found>, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { return };
                let kad = &mut swarm.behaviour_mut().kad;
                match command {
                    Command::Provide(key, reply) => match kad.start_providing(key) {
                        Ok(id) => { done.insert(id, reply); }
                        Err(_) => { let _ = reply.send(false); }
                    },
                    Command::Find(key, reply) => {
                        let id = kad.get_providers(key);
                        finds.insert(id, (reply, Instant::now()));
                    }
                    Command::Snapshot(keys, reply) => {
                        let mut table = Vec::new();
                        for bucket in kad.kbuckets() {
                            table.extend(bucket.iter().map(|e| *e.node.key.preimage()));
                        }
                        let store = kad.store_mut();
                        let holds = keys.iter().map(|k| !store.providers(k).is_empty()).collect();
                        let _ = reply.send(Snapshot { table, holds });
                    }
                }
            }
            event = swarm.select_next_some() => {
                let event = match event {
                    SwarmEvent::Behaviour(BehaviourEvent::Identify(libp2p::identify::Event::Received { peer_id, info, .. })) => {
                        route_identified(&mut swarm.behaviour_mut().kad, &peer_id, &info);
                        continue;
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => event,
                    _ => continue,
                };
                let kad::Event::OutboundQueryProgressed { id, result, stats, step } = event else { continue };
                match result {
                    QueryResult::Bootstrap(result) => {
                        if step.last
                            && let Some(settled) = settled.take()
                        {
                            let _ = settled.send(result.is_ok());
                        }
                    }
                    QueryResult::StartProviding(result) => {
                        if let Some(reply) = done.remove(&id) {
                            let _ = reply.send(result.is_ok());
                        }
                    }
                    QueryResult::GetProviders(result) => {
                        let found = matches!(&result, Ok(GetProvidersOk::FoundProviders { providers, .. }) if !providers.is_empty());
                        let finished = !found && (step.last || result.is_err());
                        if (found || finished)
                            && let Some((reply, started)) = finds.remove(&id)
                        {
                            let answer = Found { found, requests: stats.num_requests(), elapsed: started.elapsed() };
                            let _ = reply.send(answer);
                            if let Some(mut query) = swarm.behaviour_mut().kad.query_mut(&id) {
                                query.finish();
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The table a settled Kademlia holds, for every node: for each bucket
/// (distance range), up to k peers at that distance, drawn at random
/// (reservoir sampling).
fn converged_tables(keys_of: &[KBucketKey<PeerId>], rng: &mut Rng) -> Vec<Vec<usize>> {
    let k = kad::K_VALUE.get();
    let mut tables = Vec::with_capacity(keys_of.len());
    for a in 0..keys_of.len() {
        let mut buckets: Vec<(usize, Vec<usize>)> = vec![(0, Vec::new()); 256];
        for b in (0..keys_of.len()).filter(|b| *b != a) {
            let Some(bucket) = keys_of[a].distance(&keys_of[b]).ilog2() else { continue };
            let (seen, kept) = &mut buckets[bucket as usize];
            *seen += 1;
            if kept.len() < k {
                kept.push(b);
            } else {
                let at = rng.below(*seen);
                if at < k {
                    kept[at] = b;
                }
            }
        }
        tables.push(buckets.into_iter().flat_map(|(_, kept)| kept).collect());
    }
    tables
}

/// `--model`: the lookups replayed over converged tables alone, with each
/// provider record on the k nodes closest to its key (where a provide in a
/// settled network puts it); no swarms, so it reaches sizes the process
/// cannot hold as libp2p nodes.
fn model(args: &Args, rng: &mut Rng) {
    let started = Instant::now();
    let peers: Vec<PeerId> = (0..args.nodes).map(|_| PeerId::random()).collect();
    let keys_of: Vec<KBucketKey<PeerId>> = peers.iter().map(|p| KBucketKey::from(*p)).collect();
    let tables = converged_tables(&keys_of, rng);
    let targets: Vec<KBucketKey<RecordKey>> = (0..args.cids)
        .map(|i| KBucketKey::new(RecordKey::new(&format!("sim-cid-{}-{i}", args.seed))))
        .collect();
    let mut snapshots: Vec<Snapshot> = tables
        .iter()
        .map(|t| Snapshot {
            table: t.iter().map(|b| peers[*b]).collect(),
            holds: vec![false; args.cids],
        })
        .collect();
    let mut order: Vec<usize> = (0..args.nodes).collect();
    for (key, target) in targets.iter().enumerate() {
        order.sort_by_key(|n| keys_of[*n].distance(target));
        for node in order.iter().take(kad::K_VALUE.get()) {
            snapshots[*node].holds[key] = true;
        }
    }
    let index_of: HashMap<PeerId, usize> = peers.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    let mut hops = Vec::new();
    let mut unreached = 0;
    for _ in 0..args.lookups {
        let (from, key) = (rng.below(args.nodes), rng.below(args.cids));
        match replay_hops(from, key, &targets[key], &snapshots, &index_of, &keys_of, args.alpha) {
            Some(h) => hops.push(f64::from(h)),
            None => unreached += 1,
        }
    }
    let mut sizes: Vec<f64> = tables.iter().map(|t| t.len() as f64).collect();
    sizes.sort_by(f64::total_cmp);
    println!(
        "model: nodes {} (converged tables, records on the k closest), routing table p50 {} min {}, cids {}, lookups {}",
        args.nodes,
        percentile(&sizes, 0.5),
        sizes.first().copied().unwrap_or(0.0),
        args.cids,
        args.lookups
    );
    print_hops(args.alpha, hops, unreached);
    println!("  total {:.1}s", started.elapsed().as_secs_f64());
}

fn print_hops(alpha: usize, mut hops: Vec<f64>, unreached: usize) {
    hops.sort_by(f64::total_cmp);
    let mut histogram = std::collections::BTreeMap::new();
    for h in &hops {
        *histogram.entry(*h as u32).or_insert(0usize) += 1;
    }
    println!(
        "  hops (alpha {alpha}, rounds over the tables): p50 {} p90 {} p99 {} max {}, unreached {unreached}, distribution {histogram:?}",
        percentile(&hops, 0.5),
        percentile(&hops, 0.9),
        percentile(&hops, 0.99),
        hops.last().copied().unwrap_or(f64::NAN)
    );
}

/// Replays a lookup for `key` from `from` over the snapshots: rounds of
/// `alpha` requests to the closest peers not yet asked; `None` if no node
/// asked holds a provider record.
fn replay_hops(
    from: usize,
    key: usize,
    target: &KBucketKey<RecordKey>,
    snapshots: &[Snapshot],
    index_of: &HashMap<PeerId, usize>,
    keys_of: &[KBucketKey<PeerId>],
    alpha: usize,
) -> Option<u32> {
    if snapshots[from].holds[key] {
        return Some(0);
    }
    let k = kad::K_VALUE.get();
    let distance = |node: usize| keys_of[node].distance(target);
    let mut known: Vec<usize> =
        snapshots[from].table.iter().filter_map(|p| index_of.get(p).copied()).collect();
    let mut asked: HashSet<usize> = HashSet::from([from]);
    for round in 1..=64u32 {
        known.sort_by_key(|n| distance(*n));
        known.dedup();
        let batch: Vec<usize> =
            known.iter().take(k).filter(|n| !asked.contains(n)).take(alpha).copied().collect();
        if batch.is_empty() {
            return None;
        }
        for node in &batch {
            asked.insert(*node);
        }
        if batch.iter().any(|n| snapshots[*n].holds[key]) {
            return Some(round);
        }
        for node in batch {
            known.extend(snapshots[node].table.iter().filter_map(|p| index_of.get(p).copied()));
        }
    }
    None
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The hedging model: latencies in ms, 1 − `slow_share` of providers fast
/// (2–20 ms), the rest slow (300–3000 ms).
fn hedge_model(args: &Args, rng: &mut Rng) -> (u64, u64, u64, u64) {
    let (mut win, mut lose, mut tie, mut hedged_fetches) = (0, 0, 0, 0);
    let hedge_after = args.hedge_after_ms as f64;
    for _ in 0..args.fetches {
        let latencies: Vec<f64> = (0..args.providers)
            .map(|_| {
                if rng.unit() < args.slow_share {
                    300.0 + rng.unit() * 2700.0
                } else {
                    2.0 + rng.unit() * 18.0
                }
            })
            .collect();
        let first = &latencies[..args.alpha.min(latencies.len())];
        let best_first = first.iter().copied().fold(f64::INFINITY, f64::min);
        if best_first <= hedge_after {
            continue;
        }
        let end = (args.alpha + args.beta).min(latencies.len());
        let hedges = &latencies[args.alpha.min(latencies.len())..end];
        if hedges.is_empty() {
            continue;
        }
        hedged_fetches += 1;
        let best_hedge = hedges.iter().map(|l| hedge_after + l).fold(f64::INFINITY, f64::min);
        if (best_hedge - best_first).abs() < 1.0 {
            tie += 1;
        } else if best_hedge < best_first {
            win += 1;
        } else {
            lose += 1;
        }
    }
    (win, lose, tie, hedged_fetches)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rng = Rng(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    if args.model {
        model(&args, &mut rng);
        print_hedging(&args, &mut rng);
        std::process::exit(0);
    }
    // No periodic refresh: a thousand nodes refreshing every five minutes
    // keep a two-core process saturated, and a run measures the host.
    let settings = Settings {
        alpha: args.alpha,
        keys_max: 1 << 16,
        query_timeout: Duration::from_secs(30),
        bootstrap_every: None,
    };
    let started = Instant::now();
    let base = 1 + args.seed * 1_000_000;
    let mut swarms = Vec::with_capacity(args.nodes);
    let mut peers: Vec<(PeerId, Multiaddr)> = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let mut swarm = build(settings)?;
        let address: Multiaddr = format!("/memory/{}", base + i as u64).parse()?;
        swarm.listen_on(address.clone())?;
        peers.push((*swarm.local_peer_id(), address));
        swarms.push(swarm);
    }
    let keys_of: Vec<KBucketKey<PeerId>> =
        peers.iter().map(|(p, _)| KBucketKey::from(*p)).collect();
    let converged = match args.fill.as_str() {
        "converged" => true,
        "bootstrap" => false,
        other => anyhow::bail!("--fill is converged or bootstrap, not {other}"),
    };
    if converged {
        let tables = converged_tables(&keys_of, &mut rng);
        for (swarm, table) in swarms.iter_mut().zip(tables) {
            for b in table {
                swarm.behaviour_mut().kad.add_address(&peers[b].0, peers[b].1.clone());
            }
        }
    } else {
        for (i, swarm) in swarms.iter_mut().enumerate() {
            for _ in 0..args.bootstrap_peers.min(i) {
                let j = if rng.below(2) == 0 { 0 } else { rng.below(i) };
                let (other, other_address) = &peers[j];
                swarm.behaviour_mut().kad.add_address(other, other_address.clone());
            }
        }
    }
    // Nodes start a batch at a time, each batch once the one before has
    // finished its first bootstrap (as a network grows; all at once, every
    // node's bootstrap would hold hundreds of connections at the same time).
    // Lookups and provides start on a quiet network: a bootstrap storm
    // saturating the process would time queries out and measure the host.
    let mut senders = Vec::with_capacity(args.nodes);
    let mut bootstrapped = 0;
    // Converged tables name every node: all must run from the start.
    let (batch_size, settle) = if converged {
        (args.nodes, Duration::from_secs(1800))
    } else {
        (args.bootstrap_batch, Duration::from_secs(10))
    };
    let mut swarms = swarms.into_iter();
    loop {
        let mut batch = Vec::new();
        for swarm in swarms.by_ref().take(batch_size) {
            let (sender, receiver) = mpsc::channel(64);
            let (settled, answer) = oneshot::channel();
            tokio::spawn(run(swarm, receiver, settled));
            senders.push(sender);
            batch.push(answer);
        }
        if batch.is_empty() {
            break;
        }
        let deadline = tokio::time::Instant::now() + settle;
        for answer in batch {
            let answer = tokio::time::timeout_at(deadline, answer).await;
            bootstrapped += usize::from(matches!(answer, Ok(Ok(true))));
            eprint!("\r  {} nodes running, {bootstrapped} bootstrapped", senders.len());
        }
    }
    eprintln!();
    let built = started.elapsed();
    eprintln!("  built in {:.1}s; providing", built.as_secs_f64());
    let keys: Vec<RecordKey> =
        (0..args.cids).map(|i| RecordKey::new(&format!("sim-cid-{}-{i}", args.seed))).collect();
    let mut provided = 0;
    for chunk in keys.chunks(16) {
        let mut replies = Vec::new();
        for key in chunk {
            let (reply, answer) = oneshot::channel();
            senders[rng.below(args.nodes)].send(Command::Provide(key.clone(), reply)).await?;
            replies.push(answer);
        }
        for answer in replies {
            provided += usize::from(answer.await.unwrap_or(false));
        }
    }
    eprintln!("  provided {provided} by {:.1}s; looking up", started.elapsed().as_secs_f64());
    let mut plan = Vec::new();
    let mut founds = Vec::new();
    for chunk in (0..args.lookups).collect::<Vec<_>>().chunks(args.concurrent.max(1)) {
        let mut replies = Vec::new();
        for _ in chunk {
            let (from, key) = (rng.below(args.nodes), rng.below(args.cids));
            plan.push((from, key));
            let (reply, answer) = oneshot::channel();
            senders[from].send(Command::Find(keys[key].clone(), reply)).await?;
            replies.push(answer);
        }
        for answer in replies {
            founds.push(answer.await.unwrap_or_default());
        }
    }
    let mut snapshots = Vec::with_capacity(args.nodes);
    for sender in &senders {
        let (reply, answer) = oneshot::channel();
        sender.send(Command::Snapshot(keys.clone(), reply)).await?;
        snapshots.push(answer.await?);
    }
    let index_of: HashMap<PeerId, usize> =
        peers.iter().enumerate().map(|(i, (p, _))| (*p, i)).collect();
    let targets: Vec<KBucketKey<RecordKey>> =
        keys.iter().map(|k| KBucketKey::new(k.clone())).collect();
    // Where the records are: holders per key, and how many of them are
    // among the k nodes closest to the key (where a lookup ends).
    let (mut holders, mut closest_held) = (Vec::new(), Vec::new());
    let mut order: Vec<usize> = (0..args.nodes).collect();
    for (key, target) in targets.iter().enumerate() {
        order.sort_by_key(|n| keys_of[*n].distance(target));
        let k = kad::K_VALUE.get();
        holders.push(snapshots.iter().filter(|s| s.holds[key]).count() as f64);
        closest_held
            .push(order.iter().take(k).filter(|n| snapshots[**n].holds[key]).count() as f64);
    }
    holders.sort_by(f64::total_cmp);
    closest_held.sort_by(f64::total_cmp);
    println!(
        "  records: holders per key p50 {} min {}; of the k closest, holders p50 {} min {}",
        percentile(&holders, 0.5),
        holders.first().copied().unwrap_or(0.0),
        percentile(&closest_held, 0.5),
        closest_held.first().copied().unwrap_or(0.0)
    );
    let mut hops: Vec<f64> = Vec::new();
    let mut unreached = 0;
    for (from, key) in &plan {
        match replay_hops(*from, *key, &targets[*key], &snapshots, &index_of, &keys_of, args.alpha)
        {
            Some(h) => hops.push(f64::from(h)),
            None => unreached += 1,
        }
    }
    let found = founds.iter().filter(|f| f.found).count();
    let mut requests: Vec<f64> =
        founds.iter().filter(|f| f.found).map(|f| f64::from(f.requests)).collect();
    requests.sort_by(f64::total_cmp);
    let mut times: Vec<f64> =
        founds.iter().filter(|f| f.found).map(|f| f.elapsed.as_secs_f64() * 1e3).collect();
    times.sort_by(f64::total_cmp);
    let table: Vec<f64> = {
        let mut sizes: Vec<f64> = snapshots.iter().map(|s| s.table.len() as f64).collect();
        sizes.sort_by(f64::total_cmp);
        sizes
    };
    println!(
        "nodes {} (tables {}, bootstrapped {bootstrapped}, built in {:.1}s), routing table p50 {} min {}, cids {} (provided {provided}), lookups {}",
        args.nodes,
        args.fill,
        built.as_secs_f64(),
        percentile(&table, 0.5),
        table.first().copied().unwrap_or(0.0),
        args.cids,
        args.lookups
    );
    println!(
        "  libp2p get_providers: found {found}/{} ({:.1} %), requests p50 {} p99 {} max {}, time to first provider p50 {:.2} ms p99 {:.2} ms",
        founds.len(),
        100.0 * found as f64 / founds.len().max(1) as f64,
        percentile(&requests, 0.5),
        percentile(&requests, 0.99),
        requests.last().copied().unwrap_or(0.0),
        percentile(&times, 0.5),
        percentile(&times, 0.99)
    );
    let mut missed: Vec<(f64, f64)> = founds
        .iter()
        .filter(|f| !f.found)
        .map(|f| (f64::from(f.requests), f.elapsed.as_secs_f64() * 1e3))
        .collect();
    if !missed.is_empty() {
        missed.sort_by(|a, b| a.0.total_cmp(&b.0));
        let requests: Vec<f64> = missed.iter().map(|m| m.0).collect();
        let mut times: Vec<f64> = missed.iter().map(|m| m.1).collect();
        times.sort_by(f64::total_cmp);
        println!(
            "  not found: {}, requests p50 {} max {}, ended after p50 {:.0} ms max {:.0} ms",
            missed.len(),
            percentile(&requests, 0.5),
            requests.last().copied().unwrap_or(0.0),
            percentile(&times, 0.5),
            times.last().copied().unwrap_or(0.0)
        );
    }
    print_hops(args.alpha, hops, unreached);
    print_hedging(&args, &mut rng);
    println!("  total {:.1}s", started.elapsed().as_secs_f64());
    std::process::exit(0);
}

fn print_hedging(args: &Args, rng: &mut Rng) {
    let (win, lose, tie, hedged) = hedge_model(args, rng);
    let sent = (win + lose + tie).max(1);
    println!(
        "  hedging model (alpha {}, beta {}, after {} ms, {} providers, {:.0} % slow): {hedged} of {} fetches hedged; win {win} lose {lose} tie {tie}, win rate {:.3}",
        args.alpha,
        args.beta,
        args.hedge_after_ms,
        args.providers,
        args.slow_share * 100.0,
        args.fetches,
        win as f64 / sent as f64
    );
}
