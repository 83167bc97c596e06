//! The index's peers: rust-libp2p's Kademlia (TCP, Noise, Yamux, a private
//! protocol name) on a thread of its own, with a tokio runtime of its own,
//! never on a shard's executor. Shards talk to it through one bounded
//! channel of [`Command`]s; answers come back through the asking shard's
//! inbox (`crate::workers::Poster`).
//!
//! What travels in the DHT: *which ron-nodes provide a cid* (Kademlia
//! provider records, announced by the node whose shard owns a live
//! provider record of the cid, republished by Kademlia before its records
//! expire, withdrawn when the last local record does). A node finding
//! providers learns each one's HTTP address from the identify protocol
//! (`agent_version` = `ron-node/<version> <url>`); the index then asks
//! those nodes over HTTP for their live records (`routes`): their TTLs,
//! not Kademlia's, decide what is still provided.

use crate::config::Config;
use crate::limits::{
    DHT_BOOTSTRAP_EVERY, DHT_COMMANDS_MAX, DHT_PEER_URLS_MAX, DHT_PROVIDER_RECORD_TTL, DHT_PROVIDERS_PER_KEY,
    DHT_REPUBLISH,
};
use crate::workers::Poster;
use anyhow::Context as _;
use libp2p::futures::StreamExt as _;
use libp2p::identity::Keypair;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::kad::{self, GetProvidersOk, Mode, QueryId, QueryResult, RecordKey};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, noise, tcp, yamux};
use ron_proto::index::Cid;
use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The Kademlia protocol of ron-node's index (not the public IPFS DHT).
pub const KAD_PROTOCOL: &str = "/ron-node/index/kad/1.0.0";
const IDENTIFY_PROTOCOL: &str = "/ron-node/index/1.0.0";
const AGENT_PREFIX: &str = "ron-node/";

/// What a shard asks of the DHT thread.
pub enum Command {
    /// Announce that this node provides `cid` until `until_ms` (a later
    /// announcement extends it).
    Provide { cid: Cid, until_ms: u64 },
    /// The ron-nodes that provide `cid`, by their HTTP addresses.
    FindProviders { cid: Cid, deadline: Instant, answer: Poster<Result<Lookup, LookupError>> },
}

/// What a lookup found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lookup {
    /// The HTTP base URLs of the nodes found (not this one).
    pub nodes: Vec<String>,
    /// Rounds of requests the lookup took (`requests / alpha`, rounded
    /// up; 0 when this node's own store knew).
    pub hops: u32,
    pub elapsed: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("lookup failed or timed out")]
    TimedOut,
    #[error("too many DHT lookups in flight")]
    Busy,
    #[error("the DHT client has stopped")]
    Stopped,
}

/// What shards and `/readyz` read about the DHT client.
#[derive(Debug, Default)]
pub struct DhtStatus {
    pub listening: AtomicBool,
    /// Peers in the routing table, and connected.
    pub routing_peers: AtomicU64,
    pub connected: AtomicU64,
    /// Keys this node announces.
    pub provided: AtomicU64,
    /// Commands refused because the channel was full.
    pub refused: AtomicU64,
    pub stopped: AtomicBool,
    pub peer_id: Mutex<String>,
    pub listen_addrs: Mutex<Vec<String>>,
}

/// The handle shards hold; stopping it (drop) stops the thread.
pub struct Dht {
    commands: mpsc::Sender<Command>,
    pub status: Arc<DhtStatus>,
    /// Whether bootstrap peers were configured (then at least one must be
    /// reachable for the node to be ready).
    has_peers: bool,
    thread: Mutex<Option<JoinHandle<()>>>,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Dht {
    /// Starts the thread: its swarm listens on `index.dht_listen`, dials
    /// `index.peers`, and announces `url` as this node's HTTP address.
    pub fn start(config: &Config, url: String) -> anyhow::Result<Dht> {
        let keypair = identity(config)?;
        let index = &config.index;
        let listen: Multiaddr =
            index.dht_listen.parse().context("index.dht_listen is not a multiaddr")?;
        let peers = index
            .peers
            .iter()
            .map(|p| p.parse::<Multiaddr>().with_context(|| format!("index.peers: {p:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let settings = Settings {
            alpha: index.alpha as usize,
            keys_max: index.dht_keys_max as usize,
            query_timeout: Duration::from_millis(index.deadline_ms),
            bootstrap_every: Some(DHT_BOOTSTRAP_EVERY),
        };
        let (commands, receiver) = mpsc::channel(DHT_COMMANDS_MAX);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let status = Arc::new(DhtStatus::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let has_peers = !peers.is_empty();
        let thread_status = status.clone();
        let thread = std::thread::Builder::new()
            .name("index-dht".into())
            .spawn(move || {
                let stopped_flag = thread_status.clone();
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("the DHT runtime: {error}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let swarm = match build_swarm(keypair, &settings, url, &listen) {
                        Ok(swarm) => swarm,
                        Err(error) => {
                            let _ = ready_tx.send(Err(error));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let mut node = Node::new(swarm, settings, thread_status.clone());
                    node.dial(peers);
                    node.run(receiver, stopped).await;
                });
                stopped_flag.stopped.store(true, Ordering::Relaxed);
            })
            .context("starting the DHT thread")?;
        ready_rx.recv().context("the DHT thread stopped while starting")??;
        Ok(Dht {
            commands,
            status,
            has_peers,
            thread: Mutex::new(Some(thread)),
            stop: Mutex::new(Some(stop)),
        })
    }

    /// Hands `command` to the thread; `Err` when its queue is full.
    pub fn send(&self, command: Command) -> Result<(), LookupError> {
        self.commands.try_send(command).map_err(|error| {
            self.status.refused.fetch_add(1, Ordering::Relaxed);
            match error {
                mpsc::error::TrySendError::Full(_) => LookupError::Busy,
                mpsc::error::TrySendError::Closed(_) => LookupError::Stopped,
            }
        })
    }

    /// Why the DHT client keeps the node from being ready, if it does.
    pub fn not_ready(&self) -> Option<String> {
        let status = &self.status;
        if status.stopped.load(Ordering::Relaxed) {
            return Some("index DHT client has stopped".into());
        }
        if !status.listening.load(Ordering::Relaxed) {
            return Some("index DHT client is not listening yet".into());
        }
        if self.has_peers && status.routing_peers.load(Ordering::Relaxed) == 0 {
            return Some("index DHT client reaches none of index.peers".into());
        }
        None
    }

    /// Stops the thread and waits for it.
    pub fn stop(&self) {
        if let Some(stop) = self.stop.lock().expect("not poisoned").take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.lock().expect("not poisoned").take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Dht {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The node's DHT identity: an Ed25519 key kept in `data_dir/index-dht.key`
/// (0600) so that its peer id survives restarts; a fresh one in amnesia.
fn identity(config: &Config) -> anyhow::Result<Keypair> {
    if config.amnesia() {
        return Ok(Keypair::generate_ed25519());
    }
    let path = config.data_dir.join("index-dht.key");
    if let Ok(mut bytes) = std::fs::read(&path) {
        anyhow::ensure!(bytes.len() == 32, "{} is not a 32-byte key", path.display());
        return Keypair::ed25519_from_bytes(&mut bytes).context("the DHT key");
    }
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(|e| anyhow::anyhow!("drawing the DHT key: {e}"))?;
    write_private(&path, &secret)?;
    Keypair::ed25519_from_bytes(secret).context("the DHT key")
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub kad: kad::Behaviour<MemoryStore>,
    pub identify: identify::Behaviour,
}

#[derive(Clone, Copy)]
pub struct Settings {
    pub alpha: usize,
    pub keys_max: usize,
    pub query_timeout: Duration,
    /// The routing table's periodic refresh (`None`: only the bootstraps
    /// Kademlia starts when the table is nearly empty).
    pub bootstrap_every: Option<Duration>,
}

/// The Kademlia behaviour ron-node runs (also built by the simulation).
pub fn kademlia(peer: PeerId, settings: &Settings) -> kad::Behaviour<MemoryStore> {
    let store_config = MemoryStoreConfig {
        max_records: 1,
        max_value_bytes: 1,
        max_provided_keys: settings.keys_max,
        max_providers_per_key: DHT_PROVIDERS_PER_KEY,
    };
    let store = MemoryStore::with_config(peer, store_config);
    let mut config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    config
        .set_parallelism(NonZeroUsize::new(settings.alpha.max(1)).expect("at least 1"))
        .set_query_timeout(settings.query_timeout)
        .set_periodic_bootstrap_interval(settings.bootstrap_every)
        .set_provider_record_ttl(Some(DHT_PROVIDER_RECORD_TTL))
        .set_provider_publication_interval(Some(DHT_REPUBLISH))
        .set_record_ttl(None)
        .set_publication_interval(None)
        .set_replication_interval(None);
    let mut kad = kad::Behaviour::with_config(peer, store, config);
    kad.set_mode(Some(Mode::Server));
    kad
}

/// Identify's news for the routing table: a peer that speaks our Kademlia
/// is reachable at the addresses it listens on (the address a connection
/// came from is an ephemeral port).
pub fn route_identified(kad: &mut kad::Behaviour<MemoryStore>, peer: &PeerId, info: &identify::Info) {
    if info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL) {
        for address in &info.listen_addrs {
            kad.add_address(peer, address.clone());
        }
    }
}

/// The behaviour of a node: Kademlia and identify (whose agent string
/// carries `url`, the node's HTTP address).
pub fn behaviour(key: &Keypair, settings: &Settings, url: &str) -> Behaviour {
    let peer = key.public().to_peer_id();
    let agent = format!("{AGENT_PREFIX}{} {url}", env!("CARGO_PKG_VERSION"));
    let identify =
        identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public()).with_agent_version(agent);
    Behaviour { kad: kademlia(peer, settings), identify: identify::Behaviour::new(identify) }
}

fn build_swarm(
    keypair: Keypair,
    settings: &Settings,
    url: String,
    listen: &Multiaddr,
) -> anyhow::Result<Swarm<Behaviour>> {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .context("the DHT transport")?
        .with_behaviour(|key| behaviour(key, settings, &url))
        .context("the DHT behaviour")?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    swarm.listen_on(listen.clone()).context("listening for DHT peers")?;
    Ok(swarm)
}

/// A lookup in flight.
struct Pending {
    answer: Poster<Result<Lookup, LookupError>>,
    started: Instant,
    deadline: Instant,
    peers: HashSet<PeerId>,
    requests: u32,
    finished: bool,
}

/// The DHT thread's state.
struct Node {
    swarm: Swarm<Behaviour>,
    settings: Settings,
    status: Arc<DhtStatus>,
    /// Peers' HTTP addresses, from identify.
    urls: HashMap<PeerId, String>,
    pending: HashMap<QueryId, Pending>,
    /// Cids this node announces, until when (ms since the epoch).
    provided: HashMap<Cid, u64>,
}

impl Node {
    fn new(swarm: Swarm<Behaviour>, settings: Settings, status: Arc<DhtStatus>) -> Node {
        *status.peer_id.lock().expect("not poisoned") = swarm.local_peer_id().to_string();
        Node {
            swarm,
            settings,
            status,
            urls: HashMap::new(),
            pending: HashMap::new(),
            provided: HashMap::new(),
        }
    }

    fn dial(&mut self, peers: Vec<Multiaddr>) {
        for peer in peers {
            if let Err(error) = self.swarm.dial(peer.clone()) {
                tracing::warn!(%peer, %error, "dialing a DHT peer");
            }
        }
    }

    async fn run(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut bootstrap = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = &mut stop => break,
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.event(event),
                _ = tick.tick() => self.tick(),
                _ = bootstrap.tick() => {
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
            }
        }
        for (_, pending) in self.pending.drain() {
            pending.answer.post(Err(LookupError::Stopped));
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Provide { cid, until_ms } => {
                let known = self.provided.get(&cid).copied();
                if known.is_none_or(|until| until < until_ms) {
                    if known.is_none() {
                        let key = RecordKey::new(&cid.0);
                        if let Err(error) = self.swarm.behaviour_mut().kad.start_providing(key) {
                            tracing::warn!(%cid, %error, "announcing a cid in the DHT");
                            return;
                        }
                    }
                    self.provided.insert(cid, until_ms);
                }
            }
            Command::FindProviders { cid, deadline, answer } => {
                let id = self.swarm.behaviour_mut().kad.get_providers(RecordKey::new(&cid.0));
                let started = Instant::now();
                let pending = Pending {
                    answer,
                    started,
                    deadline,
                    peers: HashSet::new(),
                    requests: 0,
                    finished: false,
                };
                self.pending.insert(id, pending);
            }
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                self.status.listening.store(true, Ordering::Relaxed);
                self.status.listen_addrs.lock().expect("not poisoned").push(address.to_string());
            }
            SwarmEvent::ConnectionEstablished { .. } | SwarmEvent::ConnectionClosed { .. } => {
                let connected = self.swarm.connected_peers().count() as u64;
                self.status.connected.store(connected, Ordering::Relaxed);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => self.identified(peer_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.kad(event),
            _ => {}
        }
    }

    /// A peer told who it is: its listen addresses go to the routing table
    /// (if it speaks our Kademlia), its HTTP address to `urls`.
    fn identified(&mut self, peer: PeerId, info: identify::Info) {
        route_identified(&mut self.swarm.behaviour_mut().kad, &peer, &info);
        let url = info.agent_version.strip_prefix(AGENT_PREFIX).and_then(|rest| rest.split_once(' '));
        if let Some((_, url)) = url.filter(|(_, url)| ron_proto::index::valid_node_uri(url)) {
            if self.urls.len() >= DHT_PEER_URLS_MAX {
                self.urls.clear();
            }
            self.urls.insert(peer, url.to_owned());
        }
        self.answer_ready();
    }

    fn kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed { id, result, stats, .. } => {
                let QueryResult::GetProviders(result) = result else { return };
                let Some(pending) = self.pending.get_mut(&id) else { return };
                pending.requests = stats.num_requests();
                match result {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                        let me = *self.swarm.local_peer_id();
                        pending.peers.extend(providers.into_iter().filter(|p| *p != me));
                    }
                    Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) | Err(_) => {
                        pending.finished = true;
                    }
                }
                let unknown: Vec<PeerId> =
                    pending.peers.iter().filter(|p| !self.urls.contains_key(p)).copied().collect();
                for peer in unknown {
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(peer);
                    }
                }
                self.answer_ready();
            }
            kad::Event::RoutingUpdated { .. } => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                let peers: usize = kad.kbuckets().map(|b| b.num_entries()).sum();
                let before = self.status.routing_peers.swap(peers as u64, Ordering::Relaxed);
                if before == 0 && peers > 0 {
                    // The first peer: what was announced with nobody to
                    // tell is announced again, and the table filled.
                    let _ = kad.bootstrap();
                    for cid in self.provided.keys() {
                        let _ = kad.start_providing(RecordKey::new(&cid.0));
                    }
                }
            }
            _ => {}
        }
    }

    /// Answers the lookups that can be answered: those with a provider
    /// whose address is known, and finished ones whose providers are all
    /// known (or that found none).
    fn answer_ready(&mut self) {
        let alpha = self.settings.alpha.max(1) as u32;
        let ready: Vec<QueryId> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                let known = p.peers.iter().filter(|peer| self.urls.contains_key(peer)).count();
                known > 0 || (p.finished && p.peers.is_empty())
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            let pending = self.pending.remove(&id).expect("listed");
            if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                query.finish();
            }
            let mut nodes: Vec<String> =
                pending.peers.iter().filter_map(|p| self.urls.get(p).cloned()).collect();
            nodes.sort_unstable();
            let lookup = Lookup {
                nodes,
                hops: pending.requests.div_ceil(alpha),
                elapsed: pending.started.elapsed(),
            };
            pending.answer.post(Ok(lookup));
        }
    }

    /// Lookups past their deadline time out; announcements past their end
    /// are withdrawn.
    fn tick(&mut self) {
        let now = Instant::now();
        let late: Vec<QueryId> =
            self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
        for id in late {
            let pending = self.pending.remove(&id).expect("listed");
            if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                query.finish();
            }
            pending.answer.post(Err(LookupError::TimedOut));
        }
        let now_ms = crate::clock::unix_now_ms();
        let ended: Vec<Cid> =
            self.provided.iter().filter(|(_, until)| **until <= now_ms).map(|(c, _)| *c).collect();
        for cid in ended {
            self.provided.remove(&cid);
            self.swarm.behaviour_mut().kad.stop_providing(&RecordKey::new(&cid.0));
        }
        self.status.provided.store(self.provided.len() as u64, Ordering::Relaxed);
    }
}
