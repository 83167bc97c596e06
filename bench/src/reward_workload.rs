//! The rewarder workloads of issue 13, over a golden vector (`--scale S`,
//! `M` or `L`, see `reward_vectors`):
//!
//! * `reward-fresh`: every request computes a new epoch
//!   (`load-<run>-<thread>-<n>`): the whole path, parse to stored manifest;
//! * `reward-replay`: every request asks for the same epoch, computed by
//!   the first: the path the seed's bombardier command measures once the
//!   epoch is stored (the body still parsed, the stored bytes answered).
//!
//! The seed's steady and burst runs are either mix at a fixed rate, the
//! burst with `--burst 2` (twice the rate over the middle third: what is
//! shed is counted by status, and the tail after it shows the recovery).

use crate::reward_vectors::{SCALES, Scale, body, request};
use crate::workload::Workload;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewardMix {
    Fresh,
    Replay,
}

impl RewardMix {
    pub fn parse(name: &str) -> Option<RewardMix> {
        match name {
            "reward-fresh" => Some(RewardMix::Fresh),
            "reward-replay" => Some(RewardMix::Replay),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RewardMix::Fresh => "reward-fresh",
            RewardMix::Replay => "reward-replay",
        }
    }
}

/// A vector's request body, made once per run (L's is 26 MB).
#[derive(PartialEq, Eq)]
pub struct Body(pub Vec<u8>);

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Body({} bytes)", self.0.len())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewardSpec {
    pub mix: RewardMix,
    pub token: String,
    pub scale: Scale,
    pub body: Arc<Body>,
}

impl RewardSpec {
    pub fn new(mix: RewardMix, token: String, scale: &str) -> anyhow::Result<RewardSpec> {
        let scale = SCALES
            .into_iter()
            .find(|s| s.name == scale)
            .ok_or_else(|| anyhow::anyhow!("--scale is S, M or L, not {scale}"))?;
        Ok(RewardSpec { mix, token, scale, body: Arc::new(Body(body(&request(scale)))) })
    }

    /// The epoch every `reward-replay` request asks for.
    pub fn replay_epoch(scale: Scale) -> String {
        format!("load-replay-{}", scale.name)
    }

    pub fn describe(&self) -> String {
        format!(
            "{} of vector {} ({} actors, {} events, {} bytes)",
            self.mix.name(),
            self.scale.name,
            self.scale.actors,
            self.scale.events,
            self.body.0.len()
        )
    }

    pub fn build(&self, thread: usize, _threads: usize) -> Box<dyn Workload> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Box::new(Computes {
            spec: self.clone(),
            prefix: format!("load-{nanos:x}-{thread}"),
            replay_epoch: RewardSpec::replay_epoch(self.scale),
        })
    }
}

struct Computes {
    spec: RewardSpec,
    prefix: String,
    replay_epoch: String,
}

impl Workload for Computes {
    fn request(&mut self, index: u64, out: &mut Vec<u8>) -> usize {
        use std::io::Write as _;
        let epoch = match self.spec.mix {
            RewardMix::Fresh => format!("{}-{index}", self.prefix),
            RewardMix::Replay => self.replay_epoch.clone(),
        };
        let body = &self.spec.body.0;
        let _ = write!(
            out,
            "POST /rewarder/epochs/{epoch}/compute HTTP/1.1\r\nHost: ron-load\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.spec.token.trim(),
            body.len()
        );
        out.extend_from_slice(body);
        0
    }
}
